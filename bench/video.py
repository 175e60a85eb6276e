"""Video decoding, PyAV against imageio-ffmpeg: wheel size and frames decoded a second on one clip made here.

    python bench/video.py [--seconds 20] [--side 640] [--imageio-ffmpeg PATH]

Both decode every frame of the same H.264-free MPEG-4 clip (what PyAV can write without extra codecs) to RGB
arrays; the faster and smaller one is the video extra's decoder (batch_job/video.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clip(path: Path, seconds: float, side: int, rate: int = 30) -> int:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = side, side * 3 // 4, "yuv420p"
    frames = round(seconds * rate)
    for i in range(frames):
        frame = np.roll(base, i * 4, axis=1)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return frames


def pyav(path: Path) -> int:
    import av

    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def imageio_ffmpeg(path: Path) -> int:
    import imageio_ffmpeg as iio

    reader = iio.read_frames(str(path))
    next(reader)  # the metadata
    return sum(1 for _ in reader)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--side", type=int, default=640)
    parser.add_argument("--imageio-ffmpeg", help="a folder holding imageio_ffmpeg (pip install --target)")
    args = parser.parse_args()
    if args.imageio_ffmpeg:
        sys.path.insert(0, args.imageio_ffmpeg)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        frames = make_clip(clip, args.seconds, args.side)
        for name, decode in (("PyAV", pyav), ("imageio-ffmpeg", imageio_ffmpeg)):
            try:
                started = time.perf_counter()
                decoded = decode(clip)
                seconds = time.perf_counter() - started
            except ImportError:
                print(f"{name}: not installed")
                continue
            assert decoded == frames, (name, decoded, frames)
            print(f"{name}: {decoded} frames of {args.side}x{args.side * 3 // 4} in {seconds:.2f} s, "
                  f"{decoded / seconds:,.0f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
