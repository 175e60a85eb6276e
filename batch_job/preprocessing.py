"""The one image -> model-input function. The trainer and the runtime both import it, so they cannot drift.

Any common format and mode (JPEG, PNG incl. alpha and 16-bit, GIF, BMP, WEBP, TIFF; L, RGB, RGBA, P, CMYK;
EXIF orientation) becomes a uint8 array of shape (size, size, channels). Scaling to [0, 1] happens inside
the model (its first layer), so the arrays stay small in memory and the ONNX input is plain 0-255 floats.

Two framings, both here so that training and serving share them:
- whole (load_image): the image is a face crop, like the dataset's; centre-cropped square and resized.
- a detected face (crop_face): a square around the detector's box that reproduces the dataset's framing
  (FACE_CROP_SCALE, FACE_CROP_SHIFT: measured on the training crops, see docs/faces.md).
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from batch_job.base import ImageError

INPUT_SIZE = 48
MAX_PIXELS = 120_000_000  # a 108 MP phone photo fits; beyond this we refuse (decompression bombs)
PREPROCESSING = "exif-orient, alpha over white, 16-bit scaled to 8, grayscale, center-crop square, bilinear resize"
# A detected face is cropped as a square of FACE_CROP_SCALE x the box's longer side, centred FACE_CROP_SHIFT
# crop sides below the box's centre: on 1,000 train crops upscaled to 192 px, YuNet's box is 0.96-0.99 of the
# crop's side high and 0.76-0.81 wide, centred within 1.6% of the crop's centre (docs/faces.md).
FACE_CROP_SCALE = 1.0
FACE_CROP_SHIFT = 0.0
EXIF_ORIENTATION = 0x0112

Source = Union[str, Path, bytes, BinaryIO, Image.Image]
# Pillow's own limit (Image.MAX_IMAGE_PIXELS) is the host's to set: a library leaves it alone. open_image checks
# MAX_PIXELS itself; what Pillow refuses first (twice its limit) is the same "too large" error. The command line
# and the Lambda functions, processes of our own, set Pillow's limit to MAX_PIXELS.
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                   "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2,
                   "I;16N": 2}
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def open_image(source: Source) -> Image.Image:
    """Identify the image without decoding its pixels; refuse empty files and decompression bombs. An image
    already in memory (a PIL image: the library API) is checked and used as it is."""
    if isinstance(source, Image.Image):
        if source.width * source.height > MAX_PIXELS:
            raise ImageError(f"image too large ({source.width}x{source.height} pixels, limit {MAX_PIXELS})")
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty file (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"cannot read image header: {error}") from None
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image too large ({image.width}x{image.height} pixels, limit {MAX_PIXELS})")
    return image


def _to_grayscale(image: Image.Image) -> Image.Image:
    """Any mode -> L. Numbers beyond 8 bits are scaled by their range (16-bit by 257, floats in [0, 1] by
    255, anything else by its own min-max); transparency is composited over white."""
    if image.mode in DEEP_MODES:
        return _deep_to_grayscale(image)
    if image.mode in ("P", "PA") and ("transparency" in image.info or image.mode == "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        # gray, then over white by the alpha: one byte per pixel per step, not three or four
        alpha = image.getchannel("A")
        gray = image.convert("L")
        return Image.composite(gray, Image.new("L", image.size, 255), alpha)
    if image.mode == "RGB":
        return image.convert("L")
    if image.mode != "L":
        image = image.convert("RGB").convert("L")
    return image


DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
STRIP_PIXELS = 1 << 20  # deep images are converted a strip of rows at a time: ~4 MB of floats, whatever the size


def _deep_strips(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) of a 16-bit, 32-bit or float image, a strip at a time."""
    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        yield top, np.array(strip, dtype=np.float32)  # a writable copy of the strip


def _deep_to_grayscale(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float pixels -> 8 bits, scaled by their range: 16-bit by 257, floats in [0, 1] by 255,
    anything else by its own min-max. Two passes over strips of rows (range, then conversion into one uint8
    array), so a 100 MP float image adds 100 MB to its decode, not the 1.6 GB whole-image float copies cost."""
    low, high = np.inf, -np.inf
    for _, strip in _deep_strips(image):
        if not np.isfinite(strip).all():
            raise ImageError("image has NaN or infinite pixels")
        low, high = min(low, float(strip.min(initial=0))), max(high, float(strip.max(initial=0)))
    if image.mode == "F" and low >= 0 and high <= 1:
        scale, offset = 255.0, 0.0  # floats in [0, 1]
    elif image.mode.startswith("I;16") or 255 < high <= 65535 and low >= 0:
        scale, offset = 1 / 257.0, 0.0  # 16-bit range -> 8-bit range
    elif low < 0 or high > 65535:
        scale, offset = 255.0 / (high - low or 1), low
    else:
        scale, offset = 1.0, 0.0
    out = np.empty((image.height, image.width), np.uint8)
    for top, strip in _deep_strips(image):
        strip -= offset
        strip *= scale
        np.rint(strip, out=strip)
        np.clip(strip, 0, 255, out=strip)
        out[top:top + len(strip)] = strip
    return Image.fromarray(out)


def decode_cost(image: Image.Image, scale: float = 1.0) -> int:
    """Bytes a decode of this (opened, not loaded) image at `scale` will hold at its peak: the decoded pixels
    in their own mode plus the grayscale, orientation and transparency copies made from them."""
    factor = 1.0
    if image.format == "JPEG":
        while factor > 1 / 8 and factor / 2 >= scale:
            factor /= 2  # draft decodes at 1/2, 1/4 or 1/8 when that is still at least `scale`
    pixels = math.ceil(image.width * factor) * math.ceil(image.height * factor)
    palette_to_rgba = 4 if image.mode in ("P", "PA") else 0
    return pixels * (BYTES_PER_PIXEL.get(image.mode, 4) + 4 + palette_to_rgba)


def with_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Gray pixels (..., 1) as a model with `channels` inputs takes them: RGB models get the gray image three
    times, as in training. One image (H, W, 1) or a batch (N, H, W, 1)."""
    return np.repeat(pixels, channels, axis=-1) if channels != pixels.shape[-1] else pixels


def preprocess(image: Image.Image, size: int = INPUT_SIZE, channels: int = 1) -> np.ndarray:
    """A decoded PIL image -> uint8 array (size, size, channels): the model's input before scaling."""
    image = ImageOps.exif_transpose(image)
    image = _to_grayscale(image)
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    return with_channels(np.asarray(image, dtype=np.uint8)[:, :, None], channels)


def load_image(source: Source, size: int = INPUT_SIZE, channels: int = 1) -> np.ndarray:
    """Path, bytes or file object -> model input. Raises ImageError with a clear message for bad input."""
    image = open_image(source)
    try:
        return decode_whole(image, size, channels)
    finally:
        image.close()


def decode_whole(image: Image.Image, size: int = INPUT_SIZE, channels: int = 1) -> np.ndarray:
    """An opened image -> model input, the whole image taken as one face crop (the dataset's framing)."""
    with _decoding():
        if image.format == "JPEG":
            image.draft("L", (size, size))  # decode big JPEGs at reduced scale: much faster, same result class
        image.load()
        return preprocess(image, size, channels)


@contextmanager
def _decoding() -> Iterator[None]:
    """What a codec raises on a truncated or corrupt file becomes an ImageError for the row."""
    try:
        yield
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image: {error}") from None


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8), read without decoding the pixels: Pillow's PNG getexif() decodes the whole
    image to look for an eXIf chunk after the pixels, so for PNG only what open() found is used (after a
    load, that includes a late chunk)."""
    if image.format == "PNG":
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(EXIF_ORIENTATION, 1))
    return int(image.getexif().get(EXIF_ORIENTATION, 1))


def displayed_size(image: Image.Image, stored: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) as the image is displayed: EXIF orientations 5-8 swap the stored sides."""
    width, height = stored or image.size
    return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


def whole_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The region load_image scores, in displayed pixels: the centred square (left, top, width, height)."""
    side = min(width, height)
    return round((width - side) / 2), round((height - side) / 2), side, side


@dataclass(frozen=True)
class GrayImage:
    """A decoded grayscale image in displayed orientation, possibly at reduced scale (JPEG draft)."""
    image: Image.Image  # mode L
    full_size: tuple[int, int]  # displayed (width, height) at full resolution

    @property
    def scale(self) -> float:
        return self.image.width / self.full_size[0]


def decode_gray(image: Image.Image, scale: float = 1.0) -> GrayImage:
    """An opened image -> grayscale, decoded at no less than `scale` of its full size.

    JPEG decodes at 1/2, 1/4 or 1/8 scale for a fraction of the work (draft); other formats decode whole.
    """
    stored = image.size
    with _decoding():
        if image.format == "JPEG" and scale < 1:
            image.draft("L", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image.load()
        turn = orientation(image)  # after load: a PNG's late eXIf chunk is known now
        gray = _to_grayscale(image)  # before turning it: one byte per pixel to move, not three or four
        if turn in ORIENTATIONS:
            gray = gray.transpose(ORIENTATIONS[turn])
        return GrayImage(gray, displayed_size(image, stored))


def crop_face(gray: Image.Image, box: tuple[float, float, float, float], size: int = INPUT_SIZE,
              channels: int = 1, scale: float = FACE_CROP_SCALE, shift: float = FACE_CROP_SHIFT,
              eyes: tuple[tuple[float, float], tuple[float, float]] | None = None) -> np.ndarray:
    """A face box (left, top, width, height in `gray`'s pixels) -> model input, framed like the dataset.

    The square may reach past the image's border (a face cut by the frame): the missing part repeats the
    edge pixels rather than adding black. With `eyes` (two landmark points) the square is turned so the
    eyes are level.
    """
    left, top, width, height = box
    side = scale * max(width, height)
    centre_x, centre_y = left + width / 2, top + height / 2 + shift * side
    angle = 0.0
    if eyes is not None:
        (x1, y1), (x2, y2) = sorted(eyes)
        angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
    reach = side / 2 * (math.sqrt(2) if angle else 1.0) + 1
    x0, y0 = math.floor(centre_x - reach), math.floor(centre_y - reach)
    x1, y1 = math.ceil(centre_x + reach), math.ceil(centre_y + reach)
    inside = (max(x0, 0), max(y0, 0), min(x1, gray.width), min(y1, gray.height))
    if inside[0] >= inside[2] or inside[1] >= inside[3]:
        raise ImageError("face box outside the image")
    pixels = np.asarray(gray.crop(inside), dtype=np.uint8)
    pixels = np.pad(pixels, ((inside[1] - y0, y1 - inside[3]), (inside[0] - x0, x1 - inside[2])), mode="edge")
    region = Image.fromarray(pixels)
    centre_x, centre_y = centre_x - x0, centre_y - y0
    if angle:
        region = region.rotate(angle, resample=Image.Resampling.BILINEAR, center=(centre_x, centre_y))
    half = side / 2
    face = region.resize((size, size), Image.Resampling.BILINEAR,
                         box=(centre_x - half, centre_y - half, centre_x + half, centre_y + half))
    return with_channels(np.asarray(face, dtype=np.uint8)[:, :, None], channels)
