"""The dataset audit finds what was planted: exact copies, near copies, and one image under two labels."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from trainer import audit, dedup
from trainer.__main__ import main
from trainer.data import load_pixels, load_splits

CLASSES = ("happy", "neutral", "sad", "surprise")


def smooth_face(seed: int, size: int = 48) -> Image.Image:
    """A smooth random grayscale image: unrelated seeds are far apart, a re-encode or 1 px shift is close."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    return Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)


def save_jpeg(image: Image.Image, path: Path, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality)
    return path


def make_dataset(root: Path, per_class: dict[str, int] | None = None, plant: bool = True) -> Path:
    """root/{train,validation,test}/<class>/<n>.jpg of distinct smooth faces, plus (plant=True):
    - train/happy/dup.jpg: byte copy of train/happy/0.jpg (exact, within a split)
    - train/sad/copy_of_test.jpg: byte copy of test/sad/0.jpg (exact, across splits)
    - train/surprise/conflict.jpg: byte copy of train/neutral/1.jpg (one image, two labels)
    - validation/happy/requality.jpg: test/happy/1.jpg decoded and saved again at JPEG quality 40 (near)
    - train/neutral/shifted.jpg: validation/neutral/0.jpg shifted right by 1 px (near)
    - validation/sad/relabelled.jpg: train/happy/2.jpg re-encoded at quality 70, filed under sad (near + conflict)
    """
    per_class = per_class or {"train": 4, "validation": 2, "test": 2}
    seed = 0
    for split, count in per_class.items():
        for name in CLASSES:
            for k in range(count):
                save_jpeg(smooth_face(seed), root / split / name / f"{k}.jpg")
                seed += 1
    if plant:
        shutil.copy(root / "train/happy/0.jpg", root / "train/happy/dup.jpg")
        shutil.copy(root / "test/sad/0.jpg", root / "train/sad/copy_of_test.jpg")
        shutil.copy(root / "train/neutral/1.jpg", root / "train/surprise/conflict.jpg")
        save_jpeg(Image.open(root / "test/happy/1.jpg"), root / "validation/happy/requality.jpg", quality=40)
        pixels = np.asarray(Image.open(root / "validation/neutral/0.jpg"))
        shifted = np.concatenate([pixels[:, :1], pixels[:, :-1]], axis=1)  # 1 px right, edge column repeated
        save_jpeg(Image.fromarray(shifted), root / "train/neutral/shifted.jpg")
        save_jpeg(Image.open(root / "train/happy/2.jpg"), root / "validation/sad/relabelled.jpg", quality=70)
    return root


def near_pairs(result: audit.Audit) -> set[frozenset]:
    return {frozenset((result.files[int(i)]["path"], result.files[int(j)]["path"])) for i, j, _ in result.near_pairs}


def test_audit_counts_classes_per_split(tmp_path):
    report = audit.audit(make_dataset(tmp_path / "data")).report
    assert report["class_counts"]["test"] == {"happy": 2, "neutral": 2, "sad": 2, "surprise": 2, "total": 8}
    assert report["class_counts"]["train"] == {"happy": 5, "neutral": 5, "sad": 5, "surprise": 5, "total": 20}
    assert report["class_counts"]["validation"]["total"] == 10
    assert report["files"] == 38 and report["distinct_images"] == 35  # three planted byte copies


def test_audit_finds_planted_exact_duplicates_and_the_label_conflict(tmp_path):
    report = audit.audit(make_dataset(tmp_path / "data")).report
    exact = report["exact_duplicates"]
    groups = sorted(sorted(g) for g in (g_["files"] for g_ in exact["label_conflict_groups"]))
    assert groups == [["train/neutral/1.jpg", "train/surprise/conflict.jpg"]]
    assert exact["groups"] == 3 and exact["files_in_groups"] == 6
    assert exact["cross_split_groups"] == 1 and exact["within_one_split_groups"] == 2
    assert exact["test_images_with_copy_in_train_or_validation"] == 1
    assert exact["validation_images_with_copy_in_train"] == 0


def test_audit_finds_requality_and_shifted_near_duplicates_and_nothing_else(tmp_path):
    result = audit.audit(make_dataset(tmp_path / "data"))
    assert near_pairs(result) == {
        frozenset(("test/happy/1.jpg", "validation/happy/requality.jpg")),
        frozenset(("validation/neutral/0.jpg", "train/neutral/shifted.jpg")),
        frozenset(("train/happy/2.jpg", "validation/sad/relabelled.jpg")),
    }
    near = result.report["near_duplicates"]
    # test/sad/0 has a byte copy in train, test/happy/1 a re-encoded one in validation
    assert near["test_images_with_copy_in_train_or_validation"] == 2
    assert [sorted(g["files"]) for g in near["label_conflict_groups"]] == [
        ["train/happy/2.jpg", "validation/sad/relabelled.jpg"]]


def test_clean_dataset_has_no_duplicates_of_any_kind(tmp_path):
    report = audit.audit(make_dataset(tmp_path / "data", plant=False)).report
    assert report["exact_duplicates"]["groups"] == 0
    assert report["near_duplicates"]["pairs"] == 0 and report["near_duplicates"]["groups"] == 0


def test_shifted_correlation_tolerates_shifts_and_separates_different_images():
    a = np.asarray(smooth_face(1), dtype=np.float32)
    shifted = np.roll(np.roll(a, 2, axis=0), -2, axis=1)
    other = np.asarray(smooth_face(2), dtype=np.float32)
    corr = dedup.shifted_correlation(np.stack([a, a]), np.stack([shifted, other]))
    assert corr[0] > 0.99
    assert corr[1] < 0.6


def test_groups_joins_chains_of_pairs():
    assert dedup.groups(6, [(0, 1), (1, 2), (4, 5)]) == [[0, 1, 2], [4, 5]]


def test_write_audit_writes_json_markdown_csvs_and_charts(tmp_path):
    result = audit.audit(make_dataset(tmp_path / "data"))
    out = audit.write_audit(result, tmp_path / "audit")
    assert json.loads((out / "audit.json").read_text()) == result.report
    markdown = (out / "audit.md").read_text()
    assert "train/surprise/conflict.jpg" in markdown and "| test | 2 | 2 | 2 | 2 | 8 |" in markdown
    for png in ("class_counts.png", "near_duplicate_examples.png"):
        assert Image.open(out / png).format == "PNG"
    near = (out / "near_duplicates.csv").read_text().splitlines()
    assert near[0] == "a,b,correlation,a_label,b_label" and len(near) == 4
    assert len((out / "exact_duplicates.csv").read_text().splitlines()) == 1 + 6


def test_audit_cli_prints_summary_and_writes_report(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    assert main(["audit", str(data), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "exact duplicates: 3 groups" in printed and "label conflicts: 1" in printed
    assert (tmp_path / "out" / "audit.md").is_file()


def test_audit_cli_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nowhere")]) == 1
    assert "no dataset at" in capsys.readouterr().err


def test_drop_near_duplicates_removes_near_copies_of_test_images_from_training(tmp_path):
    data = make_dataset(tmp_path / "data")
    exact_only = load_splits(data, drop_test_duplicates=True)
    near_too = load_splits(data, drop_test_duplicates=True, drop_near_duplicates=True)
    names = lambda split: {str(p.relative_to(data)) for p in split.paths}  # noqa: E731
    assert "train/sad/copy_of_test.jpg" not in names(exact_only["train"])
    assert "validation/happy/requality.jpg" in names(exact_only["validation"])
    assert names(exact_only["validation"]) - names(near_too["validation"]) == {"validation/happy/requality.jpg"}
    assert names(near_too["train"]) == names(exact_only["train"])  # its near pairs are not with test images
    assert len(near_too["test"]) == 8


def test_fingerprints_are_unit_norm_and_match_grayscale_loading(tmp_path):
    path = save_jpeg(smooth_face(3), tmp_path / "a.jpg")
    fp = dedup.fingerprints(load_pixels([path]))
    assert fp.shape == (1, 144)
    np.testing.assert_allclose(np.linalg.norm(fp, axis=1), 1.0, atol=1e-4)
    assert abs(fp.mean()) < 1e-5
