"""Videos as inputs: a video becomes its sampled frames (`--fps`, default 1 a second), each scored like an image;
its rows carry `frame` (the frame's index in the video) and `time_s`.

Decoding uses PyAV (FFmpeg's libraries in a wheel: 36 MB, against imageio-ffmpeg's 68 MB and a subprocess per
video), an optional extra: `pip install "emotion-batch-scoring[video]"`. Without it, videos are skipped and
counted, never an error. Frames are decoded one after another (every frame is decoded; only sampled ones are
converted and scored), so a video costs its length in decoding whatever the fps. Local videos stream from
disk; an S3 video is read whole first, within the 64 MB cap on any input. A video that cannot be decoded gets
an error row, like a corrupt image.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from batch_job.base import InputError, Item, is_video_path

DEFAULT_FPS = 1.0
MAX_FPS = 60.0


@dataclass
class VideoStats:
    skipped: int = 0  # videos left out because PyAV is not installed
    videos: int = 0


def available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def frames(source, fps: float = DEFAULT_FPS) -> Iterator[tuple[int, float, object]]:
    """(frame index, time in seconds, PIL image) of the frames sampled at `fps` from a video file or file
    object: the first frame at or after 0, 1/fps, 2/fps... seconds."""
    import av

    step = 1.0 / fps
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 25)
        due = 0.0
        for index, frame in enumerate(container.decode(stream)):
            time_s = float(frame.time) if frame.time is not None else index / rate
            if time_s + 1e-6 >= due:
                yield index, round(time_s, 3), frame.to_image()
                while due <= time_s + 1e-6:
                    due += step


def is_video(item: Item) -> bool:
    """Whether an input is a video, by its shown name (a non-UTF-8 name is shown quoted)."""
    return is_video_path(item.path.rstrip('"'))


def _holding(image: object):
    return lambda: image


def _failing(message: str):
    def read():
        raise InputError(message)
    return read


def expand(items: Iterable[Item], fps: float = DEFAULT_FPS, stats: VideoStats | None = None) -> Iterator[Item]:
    """The same items, each video replaced by one item per sampled frame (an image in memory)."""
    stats = stats if stats is not None else VideoStats()
    have_av: bool | None = None
    for item in items:
        if not is_video(item):
            yield item
            continue
        if have_av is None:
            have_av = available()
        if not have_av:
            stats.skipped += 1
            continue
        stats.videos += 1
        yield from _frames_of(item, fps)


def _frames_of(item: Item, fps: float) -> Iterator[Item]:
    import io

    import av

    try:
        source = item.local or io.BytesIO(item.read())
        count = 0
        for index, time_s, image in frames(source, fps):
            count += 1
            size = image.width * image.height * 3  # type: ignore[attr-defined]
            yield replace(item, read=_holding(image), held=size, frame=index, time_s=time_s)
        if not count:
            yield replace(item, read=_failing("video has no frames"))
    except (av.FFmpegError, InputError, OSError, IndexError, ValueError) as error:
        message = str(error) or type(error).__name__
        yield replace(item, read=_failing(f"cannot decode video: {message}"))
