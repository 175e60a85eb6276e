"""The memory bound, proved: peak RSS of `python -m batch_job run` with 32 workers on a folder of huge images.

The folder holds 49 MP RGBA PNGs (a 7000x7000 PNG of a flat colour is a 200 KB file that decodes to 196 MB
of pixels) and 100 MP JPEGs, each of which must still be scored (not refused). Without the budgets, 32
workers decode up to 32 of them at once (gigabytes); with them, inputs in flight hold at most
DECODE_BUDGET_MB (default 1024) plus the largest single decode.

    python bench/memory.py [--pngs 6] [--jpegs 3] [--budget-mb 1024]  -> JSON on stdout
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def build(folder: Path, pngs: int, jpegs: int) -> None:
    for i in range(pngs):
        Image.new("RGBA", (7000, 7000), (40 + 10 * i, 90, 140, 255)).save(folder / f"big-{i}.png")
    for i in range(jpegs):
        Image.new("RGB", (10000, 10000), (120, 100 + 10 * i, 80)).save(folder / f"huge-{i}.jpg", quality=80)


def measure(folder: Path, budget_mb: int, workers: int = 32) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.csv"
        result = subprocess.run([sys.executable, "bench/measure.py", "-m", "batch_job", "run", str(folder), "-o",
                                 str(out), "--workers", str(workers), "--no-progress"], cwd=REPO, text=True,
                                capture_output=True, env={**__import__("os").environ,
                                                          "DECODE_BUDGET_MB": str(budget_mb)})
        rows = out.read_text().splitlines()[1:] if out.exists() else []
    peak = re.findall(r"\[peak_rss_kb\] (\d+)", result.stderr)
    refused = [row for row in rows if "too large" in row]
    return {"workers": workers, "budget_mb": budget_mb, "exit_status": result.returncode,
            "rows": len(rows), "refused": len(refused), "peak_rss_mb": round(int(peak[-1]) / 1024) if peak else None,
            "summary": result.stderr.strip().splitlines()[-2] if result.stderr.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pngs", type=int, default=6)
    parser.add_argument("--jpegs", type=int, default=3)
    parser.add_argument("--budget-mb", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.pngs, args.jpegs)
        result = measure(folder, args.budget_mb)
        result["images"] = {"png_49mp_rgba": args.pngs, "jpeg_100mp": args.jpegs}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
