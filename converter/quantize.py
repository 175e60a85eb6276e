"""python -m converter.quantize: INT8 graphs of the emotion model and the face detector, measured before they ship.

Static QDQ quantization (onnxruntime.quantization) with per-channel weights. Candidates differ in what decides
accuracy across CPUs: u8s8 (uint8 activations, int8 weights: the fast kernels) vs u8u8, `reduce_range` (7-bit
weights: no int16 saturation in the u8s8 kernels of CPUs without VNNI, a known onnxruntime issue) and the
calibration (MinMax or Percentile, 256 or 1,024 images). Each emotion candidate is scored by trainer.evaluation
on every subset (validation-unique is the headline); each detector candidate by the faces it finds, against
fp32's, on ../shared/photos and on the bench photo set. The best candidate that keeps validation-unique within
0.5 points (emotion) and finds the same faces (detector) is written beside the fp32 file, with the fp32 file's
model card plus an `int8` section that says how it was made and what was measured.

    python -m converter.quantize [--data DIR] [--quick]   -> models/*.int8.onnx, models/int8.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from batch_job import analysis
from batch_job.faces import FaceDetector, iou
from batch_job.precision import cpu_flags
from batch_job.preprocessing import decode_gray, load_image, open_image
from trainer import data as dataset
from trainer import evaluation

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
PHOTOS = REPO.parent / "shared" / "photos"
BENCH_PHOTOS = REPO / "bench" / "work" / "photos"
MAX_DROP_POINTS = 0.5


class Batches(CalibrationDataReader):
    def __init__(self, name: str, arrays: list[np.ndarray]):
        self.name, self.arrays = name, iter(arrays)

    def get_next(self):
        batch = next(self.arrays, None)
        return None if batch is None else {self.name: batch}


def quantize(source: Path, target: Path, name: str, batches: list[np.ndarray], weights: QuantType,
             reduce_range: bool, method: CalibrationMethod) -> None:
    """One static QDQ quantization of `source` into `target`, keeping source's metadata (the model card).
    Runs inside a temporary folder: onnxruntime's calibration leaves scratch files in the working folder."""
    source, target = source.resolve(), target.resolve()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        prepared = Path(tmp) / "prepared.onnx"
        model = onnx.load(str(source))
        if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            # per-channel QDQ needs opset 13 (DequantizeLinear's axis): YuNet ships at opset 11
            upgraded = Path(tmp) / "opset13.onnx"
            onnx.save(onnx.version_converter.convert_version(model, 13), str(upgraded))
            source_for_prep = upgraded
        else:
            source_for_prep = source
        try:
            quant_pre_process(str(source_for_prep), str(prepared))
        except Exception:  # noqa: BLE001 - YuNet's dynamic sizes defeat symbolic shape inference: plain ONNX's
            quant_pre_process(str(source_for_prep), str(prepared), skip_symbolic_shape=True)
        extra = {"CalibPercentile": 99.99} if method == CalibrationMethod.Percentile else {}
        quantize_static(str(prepared), str(target), Batches(name, batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=weights, per_channel=True,
                        reduce_range=reduce_range, calibrate_method=method, extra_options=extra,
                        nodes_to_exclude=float_tail(onnx.load(str(prepared))) if classifier(model) else [])
    proto, card = onnx.load(str(target)), onnx.load(str(source))
    del proto.metadata_props[:]
    proto.metadata_props.extend(card.metadata_props)
    if any(entry.key == "classes" for entry in card.metadata_props):  # the emotion model's card: its own seal
        from converter.seal import INT8_TOLERANCE, seal

        proto = seal(proto, INT8_TOLERANCE)
    onnx.save(proto, str(target))


def classifier(model: onnx.ModelProto) -> bool:
    """The emotion model (its card names classes), not the detector."""
    return any(entry.key == "classes" for entry in model.metadata_props)


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Every dense layer and everything downstream of one (softmax, the served-classes slice, the ensemble's
    average): kept in float, so the probabilities are not quantized to multiples of 1/255 (no ties, sums of 1
    within 1e-6). An ensemble has one dense head per member, each on its own branch: all of them stay float."""
    tail: list[str] = []
    downstream: set[str] = set()  # tensors computed from a dense layer's output
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        if node.op_type in ("MatMul", "Gemm") or downstream.intersection(node.input):
            tail.append(node.name)
            downstream.update(node.output)
    return tail


def output_checks(path: Path, pixels: np.ndarray) -> dict:
    """What the INT8 output must keep (issue 17): no exact ties between the two top classes, rows summing to 1."""
    probabilities = evaluation.onnx_predict(path)(pixels)
    top = np.sort(probabilities, axis=1)[:, -2:]
    return {"ties": int((top[:, 0] == top[:, 1]).sum()),
            "max_sum_error": float(np.abs(probabilities.sum(axis=1) - 1).max()),
            "distinct_confidences": int(len(np.unique(probabilities.max(axis=1))))}


CANDIDATES = [  # (name, weights, reduce_range, calibration method, calibration images)
    ("u8s8", QuantType.QInt8, False, CalibrationMethod.MinMax, 256),
    ("u8s8-reduce-range", QuantType.QInt8, True, CalibrationMethod.MinMax, 256),
    ("u8s8-reduce-range-1024", QuantType.QInt8, True, CalibrationMethod.MinMax, 1024),
    ("u8s8-reduce-range-percentile", QuantType.QInt8, True, CalibrationMethod.Percentile, 256),
    ("u8u8", QuantType.QUInt8, False, CalibrationMethod.MinMax, 256),
]


def emotion(root: Path, work: Path, quick: bool) -> dict:
    train = dataset.list_split(root, "train")
    rng = np.random.default_rng(0)
    data = evaluation.load(root)
    fp32 = MODELS / "emotion.onnx"
    baseline, _ = evaluation.evaluate(evaluation.onnx_predict(fp32), data)
    rows = {"fp32": _summary(baseline) | {"ms_per_face": emotion_speed(fp32)}}
    for name, weights, reduce_range, method, count in CANDIDATES[:2] if quick else CANDIDATES:
        picks = rng.choice(len(train), count, replace=False)
        pixels = np.stack([load_image(train.paths[i]) for i in picks]).astype(np.float32)
        target = work / f"emotion.{name}.onnx"
        started = time.perf_counter()
        quantize(fp32, target, "image", np.array_split(pixels, max(1, count // 64)), weights, reduce_range, method)
        metrics, _ = evaluation.evaluate(evaluation.onnx_predict(target), data)
        rows[name] = _summary(metrics) | {"seconds": round(time.perf_counter() - started, 1),
                                          "reduce_range": reduce_range, "path": str(target),
                                          "ms_per_face": emotion_speed(target)} \
            | output_checks(target, data.pixels["validation"])
        print(f"[quantize] emotion {name}: validation-unique {rows[name]['validation_unique']:.4f} "
              f"(fp32 {rows['fp32']['validation_unique']:.4f})", flush=True)
    return rows


def milliseconds(fn, seconds: float = 1.5) -> float:
    """Wall time of one call on one thread, averaged over `seconds` after a warm-up call."""
    fn()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return round((time.perf_counter() - started) / calls * 1000, 3)


def emotion_speed(path: Path) -> float:
    """ms per face on one thread, batches of 256."""
    from batch_job.model import EmotionModel

    model = EmotionModel(path)
    batch = np.random.default_rng(0).integers(0, 256, (256, 48, 48, 1), dtype=np.uint8)
    return round(milliseconds(lambda: model.predict(batch)) / 256, 4)


def _summary(metrics: dict) -> dict:
    return {subset: round(metrics[subset]["accuracy"], 4) for subset in evaluation.SUBSETS
            if metrics.get(subset, {}).get("accuracy") is not None}


def detection_inputs(paths: list[Path]) -> list[np.ndarray]:
    """Each photo as the detector sees it (gray, at detection scale), uint8 (H, W)."""
    inputs = []
    for path in paths:
        image = open_image(path.read_bytes())
        scale = analysis.detection_scale(*image.size)
        inputs.append(analysis.detection_input(decode_gray(image, min(1.0, scale)), scale))
    return inputs


def same_faces(reference: list, found: list, min_iou: float = 0.5) -> tuple[int, int]:
    """(faces of `reference` matched in `found` at IoU >= min_iou, faces of `found` with no match)."""
    matched = 0
    for face in reference:
        boxes = np.array([[f.left, f.top, f.width, f.height] for f in found], np.float32).reshape(-1, 4)
        matched += bool(len(boxes)) and float(iou(np.array([face.left, face.top, face.width, face.height]),
                                                  boxes).max()) >= min_iou
    extra = len(found) - matched
    return matched, max(0, extra)


def detector(work: Path, quick: bool) -> dict:
    from batch_job.faces import to_input

    fp32_path = MODELS / "face_detection_yunet.onnx"
    photos = sorted(PHOTOS.glob("*.png"))
    bench = sorted(BENCH_PHOTOS.glob("*.jpg"))[: 100 if quick else 300]
    calibration_inputs = detection_inputs(photos + bench[:40])
    calibration = [to_input(x) for x in calibration_inputs]
    checks = {"shared photos": detection_inputs(photos), "bench photos": detection_inputs(bench[40:])}
    fp32 = FaceDetector(fp32_path, parallel=1)
    reference = {name: [fp32.detect(x) for x in inputs] for name, inputs in checks.items()}
    photo = calibration_inputs[len(photos)]  # a bench photo at detection scale (640 px)
    rows: dict = {"fp32": {name: sum(map(len, faces)) for name, faces in reference.items()}
                  | {"ms_per_photo": milliseconds(lambda: fp32.detect(photo))}}
    for name, weights, reduce_range, method, _ in CANDIDATES[:2] if quick else CANDIDATES:
        target = work / f"face_detection_yunet.{name}.onnx"
        try:
            quantize(fp32_path, target, "input", calibration, weights, reduce_range, method)
        except Exception as error:  # noqa: BLE001 - e.g. percentile calibration over photos of unequal sizes
            rows[name] = {"failed": f"{type(error).__name__}: {str(error)[:200]}"}
            print(f"[quantize] detector {name}: failed ({rows[name]['failed']})", flush=True)
            continue
        candidate = FaceDetector(target, parallel=1)
        row: dict = {"reduce_range": reduce_range, "path": str(target),
                     "ms_per_photo": milliseconds(lambda c=candidate: c.detect(photo))}
        for check, inputs in checks.items():
            found = [candidate.detect(x) for x in inputs]
            pairs = [same_faces(r, f) for r, f in zip(reference[check], found, strict=True)]
            row[check] = {"faces": sum(map(len, found)), "matched": sum(p[0] for p in pairs),
                          "extra": sum(p[1] for p in pairs), "reference": sum(map(len, reference[check]))}
        rows[name] = row
        print(f"[quantize] detector {name}: {row}", flush=True)
    return rows


def choose_emotion(rows: dict) -> str | None:
    """The most portable candidate within MAX_DROP_POINTS on validation-unique and faster than fp32:
    reduce_range first (no saturation on any CPU), then the best accuracy."""
    base = rows["fp32"]["validation_unique"]
    good = [name for name, row in rows.items() if name != "fp32"
            and 100 * (base - row["validation_unique"]) <= MAX_DROP_POINTS
            and row["ms_per_face"] < rows["fp32"]["ms_per_face"]
            and row.get("ties", 0) == 0 and row.get("max_sum_error", 0) <= 1e-5]
    return max(good, key=lambda n: (rows[n]["reduce_range"], rows[n]["validation_unique"]), default=None)


def choose_detector(rows: dict) -> str | None:
    """The most portable candidate that finds every face fp32 finds on the shared photos and at least 98% of
    them on the bench photos, with no more than 1% extra, and runs faster than fp32 (a small depthwise network
    such as YuNet may not: then no INT8 detector ships)."""
    good = []
    for name, row in rows.items():
        if name == "fp32" or "failed" in row:
            continue
        shared, bench = row["shared photos"], row["bench photos"]
        if shared["matched"] == shared["reference"] and shared["extra"] == 0 and \
                bench["matched"] >= 0.98 * bench["reference"] and bench["extra"] <= 0.01 * bench["reference"] \
                and row["ms_per_photo"] < rows["fp32"]["ms_per_photo"]:
            good.append(name)
    return max(good, key=lambda n: (rows[n]["reduce_range"], rows[n]["bench photos"]["matched"]), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: $EMOTION_DATA_DIR or ../shared/data/...)")
    parser.add_argument("--quick", action="store_true", help="two candidates and fewer photos (a quick look)")
    parser.add_argument("--only", choices=("emotion", "detector"), help="redo one model (the other's report stays)")
    args = parser.parse_args()
    root = dataset.data_dir(args.data)
    previous = MODELS / "int8.json"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report: dict = json.loads(previous.read_text()) if args.only and previous.is_file() else {}
        report.update({"measured_on": {"machine": platform.machine(), "cpu_flags": sorted(cpu_flags() & {
            "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})}, "max_drop_points": MAX_DROP_POINTS})
        kinds = [args.only] if args.only else ["emotion", "detector"]
        if "emotion" in kinds:
            report["emotion"] = emotion(root, work, args.quick)
        if "detector" in kinds:
            report["detector"] = detector(work, args.quick)
        for kind, choose, fp32_name in (("emotion", choose_emotion, "emotion.onnx"),
                                         ("detector", choose_detector, "face_detection_yunet.onnx")):
            if kind not in kinds:
                continue
            chosen = choose(report[kind])
            report[f"{kind}_chosen"] = chosen
            target = MODELS / fp32_name.replace(".onnx", ".int8.onnx")
            if chosen is None:
                print(f"[quantize] no {kind} candidate is both accurate enough and faster: no INT8 {kind} written")
                target.unlink(missing_ok=True)
                continue
            proto = onnx.load(report[kind][chosen]["path"])
            info = {"candidate": chosen, "reduce_range": report[kind][chosen]["reduce_range"],
                    "measured": report[kind][chosen], "fp32": report[kind]["fp32"],
                    "measured_on": report["measured_on"]}
            proto.metadata_props.add(key="int8", value=json.dumps(info))
            onnx.save(proto, str(target))
            print(f"[quantize] {kind}: {chosen} -> {target.relative_to(REPO)}")
        for kind in ("emotion", "detector"):
            for row in report.get(kind, {}).values():
                row.pop("path", None)
    (MODELS / "int8.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
