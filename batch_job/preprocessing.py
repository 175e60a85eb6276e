"""The one image -> model-input function. The trainer and the runtime both import it, so they cannot drift.

Any common format and mode (JPEG, PNG incl. alpha and 16-bit, GIF, BMP, WEBP, TIFF; L, RGB, RGBA, P, CMYK;
EXIF orientation) becomes a uint8 array of shape (size, size, channels). Scaling to [0, 1] happens inside
the model (its first layer), so the arrays stay small in memory and the ONNX input is plain 0-255 floats.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CLASSES = ("happy", "neutral", "sad", "surprise")
INPUT_SIZE = 48
MAX_PIXELS = 50_000_000  # larger than any real photo of a face; beyond this we refuse (decompression bombs)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
PREPROCESSING = "exif-orient, alpha over white, 16-bit scaled to 8, grayscale, center-crop square, bilinear resize"

Source = Union[str, Path, bytes, BinaryIO]


class ImageError(ValueError):
    """An input that cannot become a model input; its message is meant for the CSV's error column."""


def _open(source: Source) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty file (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (possible decompression bomb)") from None
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image too large ({image.width}x{image.height} pixels, limit {MAX_PIXELS})")
    return image


def _to_grayscale(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 16-bit range -> 8-bit range
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "L":
        image = image.convert("RGB").convert("L")
    return image


def preprocess(image: Image.Image, size: int = INPUT_SIZE, channels: int = 1) -> np.ndarray:
    """A decoded PIL image -> uint8 array (size, size, channels): the model's input before scaling."""
    image = ImageOps.exif_transpose(image)
    image = _to_grayscale(image)
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)[:, :, None]
    return np.repeat(pixels, channels, axis=2) if channels != 1 else pixels


def load_image(source: Source, size: int = INPUT_SIZE, channels: int = 1) -> np.ndarray:
    """Path, bytes or file object -> model input. Raises ImageError with a clear message for bad input."""
    image = _open(source)
    try:
        if image.format == "JPEG":
            image.draft("L", (size, size))  # decode big JPEGs at reduced scale: much faster, same result class
        image.load()
        return preprocess(image, size, channels)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image: {error}") from None
    finally:
        image.close()


def is_image_path(path: Union[str, Path]) -> bool:
    """Whether a file found while walking a folder (or listing a prefix) counts as an image to score."""
    return Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS
