"""One image's bytes -> the faces to score: decode, find the faces, crop each the way the model learned.

Modes (--faces, $FACES):
- whole: the image is one face crop (the dataset's kind): centre square, 48x48. No detection.
- detect: only the faces the detector finds; an image without one gets a 'no face found' row.
- auto (default): detect; a small image (shorter side <= SMALL_IMAGE px, a face crop like the dataset's)
  in which no face is found is scored whole.

Decoding is sized to the work: a JPEG decodes at 1/2, 1/4 or 1/8 scale when that still gives the detector
its DETECT_SIZE pixels, and again at a higher scale only when a face found is too small in that decode
to give the model a crop of its full input size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from batch_job.budget import DECODES
from batch_job.faces import DETECT_SIZE, Face, FaceDetector
from batch_job.preprocessing import (
    FACE_CROP_SCALE,
    GrayImage,
    crop_face,
    decode_cost,
    decode_gray,
    decode_whole,
    displayed_size,
    open_image,
    whole_box,
)
from batch_job.settings import DEFAULT_FACE_MODE, FACE_MODES  # noqa: F401 - re-exported for the modes' users

SMALL_IMAGE = 128  # shorter side at or under this: most likely a face crop, scored whole if no face is found
MIN_DETECT = 160  # small images are enlarged to at least this (shorter side) before detection
# A face whose crop would come from fewer than this share of the model's input pixels (per side) in the
# first, reduced-scale decode makes the image decode again at a finer scale.
MIN_CROP_RESOLUTION = 1.0
# The default smallest face: 2% of the image's shorter side, and never under MIN_FACE_PX. In 48x48 crops the
# detector also reports 5x9 px "faces" (noise); the smallest of Solvay's 29 faces is 4.4% of its shorter side.
MIN_FACE_FRACTION = 0.02
MIN_FACE_PX = 16
# YuNet finds faces down to ~10 px at its input scale; with a --min-face-size, the image is detected at the
# scale that brings that size to DETECTABLE_PX, when that is smaller than the usual scale (fewer pixels).
DETECTABLE_PX = 24


@dataclass(frozen=True)
class FaceOptions:
    """What counts as a face: a smallest size (None: the default relative to the image), the detector's score,
    at most so many per image (largest first)."""
    min_size: int | None = None
    threshold: float = 0.6
    max_faces: int = 1000


DEFAULT_FACE_OPTIONS = FaceOptions()


def default_min_face(width: int, height: int) -> float:
    return max(MIN_FACE_PX, MIN_FACE_FRACTION * min(width, height))


@dataclass(frozen=True)
class FaceCrop:
    """A face ready for the emotion model."""
    box: tuple[int, int, int, int]  # left, top, width, height in displayed pixels, clipped to the image
    score: float | None  # the detector's score; None when the image was scored whole
    pixels: np.ndarray  # (size, size, channels) uint8
    landmarks: tuple[tuple[float, float], ...] | None = None  # the detector's five points, displayed pixels


@dataclass(frozen=True)
class Analysis:
    """What one image holds: its faces (largest first), or why it could not be read."""
    faces: tuple[FaceCrop, ...] = ()
    error: str = ""
    transient: bool = False  # the error may pass on a retry (an S3 read throttled)


def detection_scale(width: int, height: int) -> float:
    """Longest side down to DETECT_SIZE; small images up so the shorter side reaches MIN_DETECT."""
    return min(DETECT_SIZE / max(width, height), max(1.0, MIN_DETECT / min(width, height)))


def analyse(data: bytes | Image.Image, mode: str, detector: FaceDetector | None, size: int, channels: int,
            options: FaceOptions = DEFAULT_FACE_OPTIONS) -> Analysis:
    """Bytes -> Analysis. ImageError (bad input) propagates: the caller turns it into the row's error.

    Each decode first reserves its pixels in the shared decode budget (batch_job.budget), so a folder of
    huge images is decoded a few at a time rather than all at once.
    """
    if mode not in FACE_MODES:
        raise ValueError(f"unknown face mode {mode!r}; expected one of {', '.join(FACE_MODES)}")
    if mode != "whole" and detector is None:
        raise ValueError(f"face mode {mode!r} needs a face detector")
    image = open_image(data)
    width, height = displayed_size(image)
    if mode == "whole":
        return _whole(image, width, height, size, channels)
    assert detector is not None  # checked above; tells the type checker too
    scale = detection_scale(width, height)
    if options.min_size:  # a bigger smallest face needs fewer pixels to be found: detect on a smaller image
        scale = min(scale, max(DETECTABLE_PX / options.min_size, 32 / min(width, height)))
    smallest = options.min_size or default_min_face(width, height)
    with DECODES.hold(decode_cost(image, min(1.0, scale))):
        gray = decode_gray(image, min(1.0, scale))
        del image
        faces = [face for face in _detect(gray, scale, detector, options.threshold)
                 if max(face.width, face.height) >= smallest]
        faces = sorted(faces, key=lambda face: _order(_clipped_box(face, width, height)))[:options.max_faces]
        if faces:
            smallest_crop = min(FACE_CROP_SCALE * max(face.width, face.height) for face in faces)  # full-size px
            if gray.scale >= 1 or smallest_crop * gray.scale >= MIN_CROP_RESOLUTION * size:
                return Analysis(_crops(gray, faces, size, channels))  # this decode has pixels enough
        del gray
    # Past here the first reservation is released: a thread never waits for budget while holding some.
    if not faces:
        if mode == "auto" and min(width, height) <= SMALL_IMAGE:
            return _whole(open_image(data), width, height, size, channels)  # exactly what whole gives
        return Analysis()
    again = open_image(data)  # decode again at the scale the smallest face needs
    needed = min(1.0, size / smallest_crop)
    with DECODES.hold(decode_cost(again, needed)):
        return Analysis(_crops(decode_gray(again, needed), faces, size, channels))


def _whole(image, width: int, height: int, size: int, channels: int) -> Analysis:
    stored = image.size
    with DECODES.hold(decode_cost(image, size / max(1, min(width, height)))):
        pixels = decode_whole(image, size, channels)
        return Analysis((FaceCrop(whole_box(*displayed_size(image, stored)), None, pixels),))


def _crops(gray: GrayImage, faces: list[Face], size: int, channels: int) -> tuple[FaceCrop, ...]:
    """Each face cropped from the decoded image, largest first; boxes in displayed pixels."""
    width, height = gray.full_size
    crops = []
    for face in faces:
        on_gray = face.scaled(gray.scale)
        pixels = crop_face(gray.image, (on_gray.left, on_gray.top, on_gray.width, on_gray.height), size, channels)
        crops.append(FaceCrop(_clipped_box(face, width, height), face.score, pixels, face.landmarks))
    crops.sort(key=lambda crop: _order(crop.box))
    return tuple(crops)


def _order(box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """Largest first (by the box's area in the image), then top to bottom, left to right."""
    return -box[2] * box[3], box[1], box[0]


def detection_input(gray: GrayImage, scale: float) -> np.ndarray:
    """The decoded image as the detector sees it: `scale` x its full displayed size, uint8 (H, W)."""
    full_width, full_height = gray.full_size
    target = (max(1, round(full_width * scale)), max(1, round(full_height * scale)))
    small = gray.image if gray.image.size == target else gray.image.resize(
        target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(small)


def _detect(gray: GrayImage, scale: float, detector: FaceDetector, threshold: float | None = None) -> list[Face]:
    """Faces in full-size displayed pixels."""
    pixels = detection_input(gray, scale)
    back = gray.full_size[0] / pixels.shape[1]
    return [face.scaled(back) for face in detector.detect(pixels, threshold)]


def _clipped_box(face: Face, width: int, height: int) -> tuple[int, int, int, int]:
    left, top = max(0, math.floor(face.left + 0.5)), max(0, math.floor(face.top + 0.5))
    right = min(width, math.floor(face.left + face.width + 0.5))
    bottom = min(height, math.floor(face.top + face.height + 0.5))
    return left, top, max(0, right - left), max(0, bottom - top)
