"""Run a module (-m NAME) or a script in this process and print its peak RSS (VmHWM) on stderr at exit.

Why not getrusage in the parent: Linux carries ru_maxrss across fork and exec, so every child of the
(large) bench process would report at least the bench's own size. VmHWM belongs to the new program alone.
"""
import atexit
import runpy
import sys


def report() -> None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                print(f"[peak_rss_kb] {line.split()[1]}", file=sys.stderr, flush=True)


atexit.register(report)
sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parent.parent)  # the repo, as with python -m
if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).resolve().parent))
    runpy.run_path(sys.argv[0], run_name="__main__")
