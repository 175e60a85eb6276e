"""python -m batch_job: the command line (batch_job.cli). Ctrl-C while it starts is one line, not a traceback."""
import sys


def run() -> None:
    try:
        from batch_job.cli import main
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    run()
