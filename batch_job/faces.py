"""Finding faces: the YuNet detector (ONNX, run with onnxruntime) and its decoder, in plain numpy.

YuNet's graph ends before decoding: for each stride s in 8, 16, 32 it gives, per grid cell (row-major over
an (H/s) x (W/s) grid), a class and an objectness score, a box (centre offset and log size in units of s)
and five landmarks. decode() turns those into boxes in pixels, non_max_suppression() keeps the best of
overlapping ones. The same decoding as OpenCV's cv2.FaceDetectorYN (objdetect/src/face_detect.cpp).
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batch_job.base import ModelError, models_dir, usable_cpus

STRIDES = (8, 16, 32)
DETECT_SIZE = 640  # the longest side an image is scaled to before detection (YuNet's own examples)
SCORE_THRESHOLD = 0.6  # OpenCV's default is 0.9; 0.6 finds the faces of crowds (measured on ../shared/photos)
NMS_IOU = 0.3
TOP_K = 5000  # candidates kept before NMS, as OpenCV does
MAX_FACES = 1000  # per image: bounds the memory of one image's crops whatever the picture
DETECTOR_FILE = "face_detection_yunet.onnx"


def default_detector_path() -> Path:
    return Path(os.environ.get("DETECTOR_PATH") or models_dir() / DETECTOR_FILE)


class DetectorError(ModelError):
    """The face detector file is missing or not a YuNet graph (a fatal error, like a bad emotion model)."""


@dataclass(frozen=True)
class Face:
    """One face in the pixel coordinates of the image it was found in."""
    left: float
    top: float
    width: float
    height: float
    score: float
    landmarks: tuple[tuple[float, float], ...]  # right eye, left eye, nose tip, right/left mouth corner

    def scaled(self, factor: float) -> Face:
        """The same face in an image `factor` times as large."""
        return Face(self.left * factor, self.top * factor, self.width * factor, self.height * factor, self.score,
                    tuple((x * factor, y * factor) for x, y in self.landmarks))

    @property
    def area(self) -> float:
        return self.width * self.height


def decode(outputs: dict[str, np.ndarray], height: int, width: int,
           threshold: float = SCORE_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs -> (boxes (N, 4) as left, top, width, height; scores (N,); landmarks (N, 5, 2)),
    for the candidates scoring at least `threshold`. height and width: the padded input's size."""
    all_boxes, all_scores, all_marks = [], [], []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0, 1)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0, 1)
        if cls.size != rows * cols:
            raise DetectorError(f"detector output cls_{stride} has {cls.size} cells, expected {rows}x{cols}")
        scores = np.sqrt(cls * obj)
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            continue
        col = (keep % cols).astype(np.float32)[:, None]
        row = (keep // cols).astype(np.float32)[:, None]
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep]
        centre_x, centre_y = (col[:, 0] + bbox[:, 0]) * stride, (row[:, 0] + bbox[:, 1]) * stride
        box_w, box_h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        all_boxes.append(np.stack([centre_x - box_w / 2, centre_y - box_h / 2, box_w, box_h], axis=1))
        kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[keep]
        all_marks.append(np.stack([(col + kps[:, :, 0]) * stride, (row + kps[:, :, 1]) * stride], axis=2))
        all_scores.append(scores[keep])
    if not all_scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_marks)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (left, top, width, height) box with each of `boxes`."""
    left = np.maximum(box[0], boxes[:, 0])
    top = np.maximum(box[1], boxes[:, 1])
    right = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    bottom = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_IOU,
                        top_k: int = TOP_K) -> list[int]:
    """Greedy NMS: best score first; a box overlapping a kept one by more than `threshold` IoU is dropped."""
    order = list(np.argsort(-scores, kind="stable")[:top_k])
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(best)
        if order:
            overlaps = iou(boxes[best], boxes[order])
            order = [index for index, overlap in zip(order, overlaps, strict=True) if overlap <= threshold]
    return keep


def padded_size(height: int, width: int) -> tuple[int, int]:
    """YuNet takes any multiple of 32: the image is padded at the bottom and right."""
    return max(32, math.ceil(height / 32) * 32), max(32, math.ceil(width / 32) * 32)


def to_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) gray or (H, W, 3) RGB -> float32 (1, 3, H', W') BGR, zero-padded to multiples of 32."""
    height, width = pixels.shape[:2]
    padded = np.zeros((1, 3, *padded_size(height, width)), np.float32)
    if pixels.ndim == 2:
        padded[0, :, :height, :width] = pixels
    else:
        padded[0, :, :height, :width] = pixels[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR planes
    return padded


class FaceDetector:
    """YuNet loaded once per process; detect() may be called from many threads at once.

    At most `parallel` detections run at the same time (one per usable CPU by default): decode threads
    (32 of them for S3) then wait their turn instead of holding 32 sets of activations.
    """

    def __init__(self, path: str | os.PathLike | None = None, threshold: float = SCORE_THRESHOLD,
                 nms_iou: float = NMS_IOU, parallel: int | None = None, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path) if path else default_detector_path()
        if not self.path.is_file():
            raise DetectorError(f"face detector not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise DetectorError(f"cannot load face detector {self.path}: {error}") from None
        self.properties = dict(self.session.get_modelmeta().custom_metadata_map)
        self.output_names = [output.name for output in self.session.get_outputs()]
        expected = {f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES}
        if set(self.output_names) != expected:
            raise DetectorError(f"{self.path} is not a YuNet face detector (outputs {self.output_names})")
        self.input_name = self.session.get_inputs()[0].name
        self.threshold, self.nms_iou = threshold, nms_iou
        self._slots = threading.BoundedSemaphore(parallel or usable_cpus())

    def detect(self, pixels: np.ndarray, threshold: float | None = None) -> list[Face]:
        """Faces in a uint8 gray (H, W) or RGB (H, W, 3) image, in its pixel coordinates, best score first.

        Boxes are as the detector drew them: a face cut by the image border may reach outside it."""
        height, width = pixels.shape[:2]
        batch = to_input(pixels)
        with self._slots:
            raw = self.session.run(self.output_names, {self.input_name: batch})
        outputs = {name: value[0] for name, value in zip(self.output_names, raw, strict=True)}
        boxes, scores, marks = decode(outputs, batch.shape[2], batch.shape[3],
                                      self.threshold if threshold is None else threshold)
        keep = non_max_suppression(boxes, scores, self.nms_iou)[:MAX_FACES]
        faces = []
        for index in keep:
            left, top, box_w, box_h = (float(v) for v in boxes[index])
            if left >= width or top >= height or left + box_w <= 0 or top + box_h <= 0:
                continue  # found in the zero padding, not in the image
            faces.append(Face(left, top, box_w, box_h, float(scores[index]),
                              tuple((float(x), float(y)) for x, y in marks[index])))
        return faces

