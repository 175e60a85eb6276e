"""python -m trainer audit DATA_DIR: what is in the dataset before anything trains on it.

Class counts per split, byte-identical duplicates (md5) within and across splits, near-duplicates (see
trainer/dedup.py) and the same image filed under two classes. Writes audit.json, audit.md,
class_counts.csv/.png, exact_duplicates.csv, near_duplicates.csv and near_duplicate_examples.png.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batch_job.results import CLASSES
from trainer import data as dataset
from trainer import dedup

EXAMPLE_PAIRS = 24


def list_files(root: Path) -> list[dict]:
    """Every image of every split: split, class, path relative to root, md5 of the bytes."""
    files = []
    for split in dataset.SPLITS:
        if not (root / split).is_dir():
            continue
        listing = dataset.list_split(root, split)
        for path, label, digest in zip(listing.paths, listing.labels, listing.digests, strict=True):
            files.append({"split": split, "label": CLASSES[label], "path": str(path.relative_to(root)),
                          "md5": digest})
    return files


def class_counts(files: list[dict]) -> dict[str, dict[str, int]]:
    present = {f["split"] for f in files}
    counts = {split: {name: 0 for name in CLASSES} for split in dataset.SPLITS if split in present}
    for f in files:
        counts[f["split"]][f["label"]] += 1
    for split_counts in counts.values():
        split_counts["total"] = sum(split_counts[name] for name in CLASSES)
    return counts


def _describe_group(files: list[dict], members: list[int]) -> dict:
    return {"files": [files[k]["path"] for k in members],
            "splits": sorted({files[k]["split"] for k in members}, key=dataset.SPLITS.index),
            "classes": sorted({files[k]["label"] for k in members}, key=CLASSES.index)}


def _with_copy_in(files: list[dict], edges, split: str, others: tuple[str, ...]) -> int:
    """How many images of `split` are linked by an edge to an image of one of `others`."""
    linked = set()
    for i, j in edges:
        for a, b in ((i, j), (j, i)):
            if files[a]["split"] == split and files[b]["split"] in others:
                linked.add(a)
    return len(linked)


@dataclass
class Audit:
    report: dict  # plain data: audit.json
    files: list[dict]  # split, label, path, md5 per image
    pixels: np.ndarray  # (N, 48, 48, 1) uint8, same order as files
    near_pairs: np.ndarray  # (M, 3): i, j, correlation; near but not byte-identical


def audit(root: Path, min_correlation: float = dedup.MIN_CORRELATION) -> Audit:
    """Everything the audit finds; write_audit turns it into files."""
    started = time.perf_counter()
    root = Path(root)
    files = list_files(root)
    if not files:
        raise FileNotFoundError(f"no images under {root}/{{train,validation,test}}/<class>/")

    by_digest: dict[str, list[int]] = defaultdict(list)
    for k, f in enumerate(files):
        by_digest[f["md5"]].append(k)
    exact_groups = sorted((m for m in by_digest.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))
    exact_edges = [(m[0], k) for m in exact_groups for k in m[1:]]
    exact = [_describe_group(files, m) for m in exact_groups]

    pixels = dataset.load_pixels([root / f["path"] for f in files])
    pairs = dedup.near_duplicate_pairs(pixels, min_correlation=min_correlation)
    near_edges = [(int(i), int(j)) for i, j, _ in pairs if files[int(i)]["md5"] != files[int(j)]["md5"]]
    pairs = np.array([p for p in pairs if files[int(p[0])]["md5"] != files[int(p[1])]["md5"]]).reshape(-1, 3)
    # A near-duplicate group joins byte-identical copies and near copies: one face photo, however many files.
    near_groups = [m for m in dedup.groups(len(files), exact_edges + near_edges)
                   if len({files[k]["md5"] for k in m}) > 1]
    near = [_describe_group(files, m) for m in near_groups]
    exact_conflict_files = {p for g in exact if len(g["classes"]) > 1 for p in g["files"]}

    report = {
        "data_dir": str(root),
        "files": len(files),
        "distinct_images": len(by_digest),
        "class_counts": class_counts(files),
        "exact_duplicates": {
            "groups": len(exact),
            "files_in_groups": sum(len(g["files"]) for g in exact),
            "within_one_split_groups": sum(len(g["splits"]) == 1 for g in exact),
            "cross_split_groups": sum(len(g["splits"]) > 1 for g in exact),
            "test_images_with_copy_in_train_or_validation": _with_copy_in(files, exact_edges, "test",
                                                                          ("train", "validation")),
            "validation_images_with_copy_in_train": _with_copy_in(files, exact_edges, "validation", ("train",)),
            "label_conflict_groups": [g for g in exact if len(g["classes"]) > 1],
        },
        "near_duplicates": {
            "method": (f"12x12 block-mean fingerprint, cosine >= {dedup.CANDIDATE_SIMILARITY} as candidates; "
                       f"confirmed by pixel correlation >= {min_correlation} over shifts up to "
                       f"{dedup.MAX_SHIFT} px (byte-identical pairs not counted as near)"),
            "min_correlation": min_correlation,
            "pairs": len(near_edges),
            "groups": len(near),
            "files_in_groups": sum(len(g["files"]) for g in near),
            "cross_split_pairs": sum(files[i]["split"] != files[j]["split"] for i, j in near_edges),
            "test_images_with_copy_in_train_or_validation": _with_copy_in(
                files, exact_edges + near_edges, "test", ("train", "validation")),
            "validation_images_with_copy_in_train": _with_copy_in(
                files, exact_edges + near_edges, "validation", ("train",)),
            "label_conflict_groups": [g for g in near if len(g["classes"]) > 1
                                      and not set(g["files"]) <= exact_conflict_files],
        },
        "seconds": 0.0,
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    return Audit(report, files, pixels, pairs)


def summary(report: dict) -> str:
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    counts = report["class_counts"]
    lines = [f"{report['files']:,} files, {report['distinct_images']:,} distinct images in {report['data_dir']}"]
    lines += [f"  {split}: " + ", ".join(f"{name} {counts[split][name]}" for name in CLASSES)
              + f" (total {counts[split]['total']})" for split in counts]
    lines += [
        f"exact duplicates: {exact['groups']} groups, {exact['files_in_groups']} files "
        f"({exact['cross_split_groups']} groups across splits); test images with a copy in train/validation: "
        f"{exact['test_images_with_copy_in_train_or_validation']}; validation images with a copy in train: "
        f"{exact['validation_images_with_copy_in_train']}; label conflicts: {len(exact['label_conflict_groups'])}",
        f"near duplicates: {near['pairs']} pairs in {near['groups']} groups ({near['cross_split_pairs']} pairs "
        f"across splits); test images with an exact or near copy in train/validation: "
        f"{near['test_images_with_copy_in_train_or_validation']}; validation images with one in train: "
        f"{near['validation_images_with_copy_in_train']}; label conflicts: {len(near['label_conflict_groups'])}",
    ]
    return "\n".join(lines)


def _group_lines(groups: list[dict], limit: int = 50) -> list[str]:
    lines = [f"- {', '.join(g['classes'])}: " + ", ".join(f"`{p}`" for p in g["files"]) for g in groups[:limit]]
    if len(groups) > limit:
        lines.append(f"- ... and {len(groups) - limit} more (audit.json has them all)")
    return lines or ["- none"]


def to_markdown(report: dict) -> str:
    import pandas as pd

    from trainer.report import markdown_table

    exact, near = report["exact_duplicates"], report["near_duplicates"]
    counts = pd.DataFrame(report["class_counts"]).T.rename_axis("split").reset_index()
    parts = [
        "# Dataset audit", "",
        f"Data: `{report['data_dir']}`: {report['files']:,} files, {report['distinct_images']:,} distinct "
        f"images (md5 of the bytes). Audit took {report['seconds']} s.", "",
        "## Class counts", "", markdown_table(counts), "", "![class counts](class_counts.png)", "",
        "## Exact duplicates (byte-identical files)", "",
        f"- {exact['groups']} groups cover {exact['files_in_groups']} files; "
        f"{exact['within_one_split_groups']} groups stay within one split, {exact['cross_split_groups']} cross splits.",
        f"- Test images with a copy in train or validation: {exact['test_images_with_copy_in_train_or_validation']}.",
        f"- Validation images with a copy in train: {exact['validation_images_with_copy_in_train']}.",
        f"- Label conflicts (one file, two classes): {len(exact['label_conflict_groups'])} groups.", "",
        *_group_lines(exact["label_conflict_groups"]), "",
        "## Near-duplicates (same photo re-encoded, shifted or re-cropped)", "",
        f"Method: {near['method']}.", "",
        f"- {near['pairs']} near pairs that are not byte-identical, {near['cross_split_pairs']} of them across splits; "
        f"{near['groups']} groups (with their exact copies) cover {near['files_in_groups']} files.",
        f"- Test images with an exact or near copy in train or validation: "
        f"{near['test_images_with_copy_in_train_or_validation']}.",
        f"- Validation images with an exact or near copy in train: {near['validation_images_with_copy_in_train']}.",
        f"- Groups whose files carry more than one class (beyond the exact conflicts above): "
        f"{len(near['label_conflict_groups'])}. Some are the same photo mislabelled, some a neighbouring frame "
        "of one shoot with a changed expression: review them in near_duplicate_examples.png.", "",
        *_group_lines(near["label_conflict_groups"]), "",
        "![near-duplicate examples](near_duplicate_examples.png)", "",
        "Training drops byte-identical copies of test images from train and validation "
        "(config `drop_test_duplicates`, default on) and, with `drop_near_duplicates = true`, near copies too.",
    ]
    return "\n".join(parts) + "\n"


def plot_counts(counts: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(counts)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        values = [counts[split][name] for name in CLASSES]
        bars = ax.bar(np.arange(len(CLASSES)) + (k - (len(splits) - 1) / 2) * width, values, width, label=split)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_ylabel("images")
    ax.set_title("images per class and split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def example_sheet(files: list[dict], pixels: np.ndarray, pairs: np.ndarray, out: Path) -> None:
    """Side-by-side near-duplicate pairs for a human to check: label conflicts and cross-split pairs first."""
    from PIL import Image, ImageDraw

    def rank(p):
        a, b = files[int(p[0])], files[int(p[1])]
        return (a["label"] == b["label"], a["split"] == b["split"], -p[2])

    chosen = sorted(pairs.tolist(), key=rank)[:EXAMPLE_PAIRS]
    size, pad, text = pixels.shape[1], 4, 14
    sheet = Image.new("L", (2 * size + 3 * pad + 2 * 150, max(1, len(chosen)) * (size + text + pad)), 255)
    draw = ImageDraw.Draw(sheet)
    for row, (i, j, corr) in enumerate(chosen):
        y = row * (size + text + pad)
        for col, k in enumerate((int(i), int(j))):
            x = pad + col * (size + pad + 150)
            sheet.paste(Image.fromarray(pixels[k][:, :, 0]), (x, y + text))
            draw.text((x + size + 2, y + text), f"{files[k]['split']}/\n{files[k]['label']}", fill=0)
        draw.text((pad, y), f"corr {corr:.3f}: {files[int(i)]['path']} ~ {files[int(j)]['path']}", fill=0)
    sheet.save(out)


def write_audit(result: Audit, out: Path) -> Path:
    import pandas as pd

    report, files, pairs = result.report, result.files, result.near_pairs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "audit.md").write_text(to_markdown(report))
    pd.DataFrame(report["class_counts"]).T.rename_axis("split").to_csv(out / "class_counts.csv")
    plot_counts(report["class_counts"], out / "class_counts.png")
    by_digest: dict[str, list[dict]] = defaultdict(list)
    for f in files:
        by_digest[f["md5"]].append(f)
    rows = [{"group": g, **f} for g, members in enumerate(m for m in by_digest.values() if len(m) > 1)
            for f in members]
    pd.DataFrame(rows, columns=["group", "split", "label", "path", "md5"]).to_csv(
        out / "exact_duplicates.csv", index=False)
    pd.DataFrame([{"a": files[int(i)]["path"], "b": files[int(j)]["path"], "correlation": round(float(c), 4),
                   "a_label": files[int(i)]["label"], "b_label": files[int(j)]["label"]}
                  for i, j, c in pairs],
                 columns=["a", "b", "correlation", "a_label", "b_label"]).to_csv(out / "near_duplicates.csv",
                                                                                 index=False)
    example_sheet(files, result.pixels, pairs, out / "near_duplicate_examples.png")
    return out
