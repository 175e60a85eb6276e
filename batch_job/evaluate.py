"""Accuracy of a predictions file whose paths name their true class (e.g. test/happy/1.jpg or happy/1.jpg).
The classes are the file's own (its p_<class> columns), not an assumed four."""
from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

from batch_job import formats


def label_of(path: str, classes: tuple[str, ...] | list[str]) -> str | None:
    """The last folder in the path that is a class name, if any."""
    for part in reversed(PurePosixPath(path).parts[:-1]):
        if part in classes:
            return part
    return None


def classes_of(names: list[str]) -> list[str]:
    """The classes a predictions file scores: its p_<class> columns, in order."""
    return [name[2:] for name in names if name.startswith("p_")]


def evaluate(csv_path: str) -> dict:
    """Accuracy overall and per class, one answer per image whose path carries a label: its largest face
    (face 1), or its whole-image row. Error rows and images without a face count as wrong."""
    total: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    fmt = formats.of_name(csv_path) or formats.CSV
    with open(csv_path, newline="", encoding="utf-8") as f:
        names, rows = fmt.read(f)
        classes = classes_of(names)
        for cells in rows:
            row = dict(zip(names, cells, strict=False))
            label = label_of(row["path"], classes)
            if label is None or row.get("face", "1") not in ("", "0", "1"):
                continue
            total[label] += 1
            correct[label] += row["emotion"] == label
    n = sum(total.values())
    return {"images": n, "accuracy": sum(correct.values()) / n if n else None,
            "per_class": {c: correct[c] / total[c] for c in classes if total[c]}}
