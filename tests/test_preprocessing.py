"""The one preprocessing function: every common format and mode becomes the same model input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from batch_job.preprocessing import ImageError, load_image, preprocess
from tests.conftest import face_like


def encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_lossless_formats_and_modes_give_the_grayscale_pixels(fmt, mode):
    gray = face_like(1)
    image = gray.convert(mode)
    expected = np.asarray(image.convert("RGB").convert("L"))[:, :, None]
    pixels = load_image(encode(image, fmt))
    assert pixels.shape == (48, 48, 1) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_close_to_the_original(fmt):
    image = Image.new("L", (48, 48), 0)
    image.paste(200, (0, 0, 24, 48))
    pixels = load_image(encode(image, fmt, quality=95)).astype(int)[:, :, 0]
    assert abs(pixels[:, :20].mean() - 200) < 6 and pixels[:, 28:].mean() < 6


def test_cmyk_jpeg_is_converted():
    pixels = load_image(encode(Image.new("CMYK", (60, 60), (0, 0, 0, 0)), "JPEG"))
    assert pixels.shape == (48, 48, 1) and pixels.mean() > 245  # no ink = white


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 24, 48))
    pixels = load_image(encode(image, "PNG"))[:, :, 0]
    assert (pixels[:, :24] == 0).all() and (pixels[:, 24:] == 255).all()


def test_palette_with_transparency_becomes_white():
    image = Image.new("P", (48, 48), 0)
    image.putpalette([0, 0, 0] * 256)
    pixels = load_image(encode(image, "GIF", transparency=0))
    assert (pixels == 255).all()


def test_16_bit_png_is_scaled_not_clipped():
    values = np.linspace(0, 255, 48 * 48).reshape(48, 48).astype(np.uint8)
    image = Image.fromarray(values.astype(np.uint16) * 257)
    assert image.mode == "I;16"
    pixels = load_image(encode(image, "PNG"))[:, :, 0]
    np.testing.assert_allclose(pixels.astype(int), values.astype(int), atol=1)


def test_exif_orientation_is_applied():
    upright = Image.new("L", (48, 48), 0)
    upright.paste(255, (0, 0, 48, 12))  # white band on top
    stored = upright.rotate(180)  # as the camera stored it; EXIF says rotate 180 to display
    exif = Image.Exif()
    exif[0x0112] = 3
    pixels = load_image(encode(stored, "PNG", exif=exif.tobytes()))[:, :, 0]
    assert pixels[:12].mean() == 255 and pixels[12:].mean() == 0


def test_any_size_is_center_cropped_and_resized():
    wide = Image.new("L", (300, 100), 0)
    wide.paste(255, (100, 0, 200, 100))  # the white square in the middle survives the center crop
    pixels = load_image(encode(wide, "PNG"))[:, :, 0]
    assert pixels.shape == (48, 48) and pixels.mean() > 250


def test_rgb_models_get_the_gray_image_repeated():
    pixels = load_image(encode(face_like(3), "PNG"), channels=3)
    assert pixels.shape == (48, 48, 3)
    assert (pixels[:, :, 0] == pixels[:, :, 2]).all()


def test_preprocess_and_load_image_agree():
    image = face_like(4, size=64, mode="RGB")
    np.testing.assert_array_equal(preprocess(image), load_image(encode(image, "PNG")))


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"hello, I am text pretending to be a jpeg", "not a recognised image"),
])
def test_bad_bytes_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_truncated_jpeg_raises_clear_error():
    data = encode(face_like(5, size=200), "JPEG", quality=95)
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(data[: len(data) // 2])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the warning Pillow gives on the way
def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (12_000, 12_000)), "PNG")  # 144 Mpixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="too large"):
        load_image(bomb)
