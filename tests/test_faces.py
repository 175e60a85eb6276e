"""Faces in photos: the YuNet decoder against hand-made outputs, the detector on pasted faces and real photos,
crop framing, EXIF orientation, the face modes and the CSV rows they give."""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from PIL import Image

from batch_job import analysis as analysis_module
from batch_job.analysis import analyse, detection_scale
from batch_job.cli import main
from batch_job.faces import FaceDetector, decode, iou, non_max_suppression, to_input
from batch_job.preprocessing import crop_face, displayed_size
from batch_job.results import CLASSES, NO_FACE
from tests.conftest import SHARED_PHOTOS, needs_photos

# The astronaut's face in ../shared/photos/astronaut.png, judged by eye (brows to chin, cheek to cheek).
ASTRONAUT_FACE = (180, 75, 90, 105)
HEAD_REGION = (130, 20, 330, 220)  # a square around her head that we paste into canvases


def empty_outputs(height: int, width: int) -> dict[str, np.ndarray]:
    outputs = {}
    for stride in (8, 16, 32):
        cells = (height // stride) * (width // stride)
        outputs |= {f"cls_{stride}": np.zeros((cells, 1), np.float32), f"obj_{stride}": np.zeros((cells, 1), np.float32),
                    f"bbox_{stride}": np.zeros((cells, 4), np.float32), f"kps_{stride}": np.zeros((cells, 10), np.float32)}
    return outputs


def set_cell(outputs, stride, row, col, width, cls, obj, bbox, kps=(0.0,) * 10):
    index = row * (width // stride) + col
    outputs[f"cls_{stride}"][index] = cls
    outputs[f"obj_{stride}"][index] = obj
    outputs[f"bbox_{stride}"][index] = bbox
    outputs[f"kps_{stride}"][index] = kps


def test_decode_turns_a_grid_cell_into_a_box_score_and_landmarks():
    outputs = empty_outputs(64, 64)
    kps = (0.1, 0.2, 0.9, 0.2, 0.5, 0.6, 0.2, 1.0, 0.8, 1.0)
    set_cell(outputs, 16, 1, 2, 64, cls=0.81, obj=1.0, bbox=(0.5, 0.25, math.log(2), math.log(3)), kps=kps)
    boxes, scores, marks = decode(outputs, 64, 64, threshold=0.5)
    # centre (2 + 0.5) * 16 = 40, (1 + 0.25) * 16 = 20; size 2 * 16 = 32 by 3 * 16 = 48
    np.testing.assert_allclose(boxes, [[24, -4, 32, 48]], atol=1e-4)
    np.testing.assert_allclose(scores, [0.9], atol=1e-6)  # sqrt(0.81 * 1.0)
    np.testing.assert_allclose(marks[0, 0], [(2 + 0.1) * 16, (1 + 0.2) * 16], atol=1e-4)
    np.testing.assert_allclose(marks[0, 4], [(2 + 0.8) * 16, (1 + 1.0) * 16], atol=1e-4)


def test_decode_clips_scores_and_drops_candidates_under_the_threshold():
    outputs = empty_outputs(64, 64)
    set_cell(outputs, 8, 0, 0, 64, cls=1.7, obj=0.25, bbox=(0, 0, 0, 0))  # clipped to 1 -> sqrt(0.25) = 0.5
    set_cell(outputs, 32, 1, 1, 64, cls=-3.0, obj=0.9, bbox=(0, 0, 0, 0))  # clipped to 0
    boxes, scores, _ = decode(outputs, 64, 64, threshold=0.4)
    np.testing.assert_allclose(scores, [0.5], atol=1e-6)
    assert decode(outputs, 64, 64, threshold=0.6)[0].shape == (0, 4)


def test_non_max_suppression_keeps_the_best_of_overlapping_boxes_and_separate_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10], [0, 0, 10, 12]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert non_max_suppression(boxes, scores, threshold=0.3) == [1, 2]
    assert iou(boxes[0], boxes[[0, 2]]).tolist() == [1.0, 0.0]


def test_detector_input_is_bgr_zero_padded_to_multiples_of_32():
    rgb = np.zeros((33, 40, 3), np.uint8)
    rgb[..., 0] = 200  # red
    tensor = to_input(rgb)
    assert tensor.shape == (1, 3, 64, 64)
    assert tensor[0, 2, :33, :40].min() == 200 and tensor[0, 0].max() == 0  # red is the last plane (BGR)
    assert tensor[0, :, 33:, :].max() == 0 and tensor[0, :, :, 40:].max() == 0


def test_detection_scale_shrinks_big_photos_and_enlarges_small_crops():
    assert detection_scale(4000, 3000) == pytest.approx(640 / 4000)
    assert detection_scale(48, 48) == pytest.approx(160 / 48)
    assert detection_scale(300, 200) == 1.0


def test_crop_face_takes_a_square_around_the_box_and_repeats_the_edge_past_the_border():
    pixels = np.zeros((100, 100), np.uint8)
    pixels[40:60, 30:50] = 255  # a white 20x20 square
    gray = Image.fromarray(pixels)
    crop = crop_face(gray, (30, 40, 20, 20), size=20, scale=1.0)[:, :, 0]
    assert crop.min() >= 250  # exactly the square
    wide = crop_face(gray, (30, 40, 20, 20), size=40, scale=2.0)[:, :, 0]
    assert wide[12:28, 12:28].min() >= 250 and wide[:5].max() < 5  # centred, black around it
    edge = np.zeros((50, 50), np.uint8)
    edge[:, :10] = 200  # a bright left border
    past = crop_face(Image.fromarray(edge), (-10, 10, 20, 20), size=20, scale=1.0)[:, :, 0]
    assert past[:, :8].min() >= 190  # the missing left part repeats the edge, not black


def test_crop_face_levels_the_eyes():
    pixels = np.zeros((200, 200), np.uint8)
    for x in range(40, 160):  # a line through two "eyes" tilted by 20 degrees
        y = round(100 + (x - 100) * math.tan(math.radians(20)))
        pixels[y - 1:y + 2, x] = 255
    eyes = ((70, 100 + (70 - 100) * math.tan(math.radians(20))), (130, 100 + 30 * math.tan(math.radians(20))))
    level = crop_face(Image.fromarray(pixels), (50, 50, 100, 100), size=100, scale=1.0, eyes=eyes)[:, :, 0]
    rows = np.flatnonzero(level[:, 10:90].max(axis=1) > 100)
    assert rows.max() - rows.min() <= 4  # the line is horizontal after levelling


def head(scale: float = 1.0) -> Image.Image:
    region = Image.open(SHARED_PHOTOS / "astronaut.png").convert("RGB").crop(HEAD_REGION)
    return region.resize((round(region.width * scale), round(region.height * scale)), Image.Resampling.LANCZOS)


def pasted_face_box(at: tuple[int, int], scale: float) -> tuple[float, float, float, float]:
    left, top, width, height = ASTRONAUT_FACE
    return (at[0] + (left - HEAD_REGION[0]) * scale, at[1] + (top - HEAD_REGION[1]) * scale, width * scale,
            height * scale)


def box_iou(a, b) -> float:
    return float(iou(np.array(a, np.float32), np.array([b], np.float32))[0])


def canvas(size=(900, 700)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(90, 110, (size[1], size[0], 3), dtype=np.uint8))


def save(image: Image.Image, path, fmt="JPEG", **kwargs):
    image.save(path, fmt, quality=92, **kwargs)
    return path


def rows_of(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def box_of(row) -> tuple[int, ...]:
    return tuple(int(row[k]) for k in ("left", "top", "width", "height"))


@needs_photos
def test_a_face_pasted_at_a_known_place_is_found_there(tmp_path, tiny_model):
    picture = canvas()
    picture.paste(head(0.8), (500, 300))
    out = tmp_path / "out.csv"
    assert main(["run", str(save(picture, tmp_path / "one.jpg")), "--model", str(tiny_model), "-o", str(out)]) == 0
    (row,) = rows_of(out)
    assert row["face"] == "1" and float(row["face_score"]) > 0.6 and row["emotion"] and row["error"] == ""
    assert box_iou(box_of(row), pasted_face_box((500, 300), 0.8)) >= 0.7


@needs_photos
def test_two_faces_give_two_rows_largest_first(tmp_path, tiny_model):
    picture = canvas((1200, 700))
    picture.paste(head(0.6), (80, 100))
    picture.paste(head(1.2), (600, 300))
    out = tmp_path / "out.csv"
    assert main(["run", str(save(picture, tmp_path / "two.png", "PNG")), "--model", str(tiny_model),
                 "-o", str(out)]) == 0
    rows = rows_of(out)
    assert [row["face"] for row in rows] == ["1", "2"]
    assert box_iou(box_of(rows[0]), pasted_face_box((600, 300), 1.2)) >= 0.7
    assert box_iou(box_of(rows[1]), pasted_face_box((80, 100), 0.6)) >= 0.7


def test_a_blank_photo_gets_one_no_face_row_and_is_not_a_failure(tmp_path, tiny_model, capsys):
    out = tmp_path / "out.csv"
    save(Image.new("RGB", (640, 480), (128, 128, 128)), tmp_path / "blank.jpg")
    assert main(["run", str(tmp_path / "blank.jpg"), "--model", str(tiny_model), "-o", str(out)]) == 0
    (row,) = rows_of(out)
    assert row["face"] == "0" and row["emotion"] == "" and row["p_happy"] == "" and row["error"] == NO_FACE
    assert "1 image, 0 faces, 1 without a face, 0 errors" in capsys.readouterr().err


@needs_photos
def test_exif_rotated_photo_gives_boxes_in_displayed_coordinates(tmp_path, tiny_model):
    upright = canvas((900, 600))
    upright.paste(head(0.8), (550, 250))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": store it turned the other way
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    path = save(stored, tmp_path / "rotated.jpg", exif=exif.tobytes())
    with Image.open(path) as opened:
        assert opened.size == (600, 900) and displayed_size(opened) == (900, 600)
    out = tmp_path / "out.csv"
    assert main(["run", str(path), "--model", str(tiny_model), "-o", str(out)]) == 0
    (row,) = rows_of(out)
    assert box_iou(box_of(row), pasted_face_box((550, 250), 0.8)) >= 0.7


@needs_photos
def test_the_solvay_photo_gives_the_29_faces_give_or_take_three(tmp_path, tiny_model):
    out = tmp_path / "out.csv"
    assert main(["run", str(SHARED_PHOTOS / "solvay_conference_1927.png"), "--model", str(tiny_model),
                 "-o", str(out)]) == 0
    rows = rows_of(out)
    assert 25 <= len(rows) <= 32
    areas = [int(row["width"]) * int(row["height"]) for row in rows]
    assert [row["face"] for row in rows] == [str(i) for i in range(1, len(rows) + 1)] and areas == sorted(areas)[::-1]
    assert all(0 <= int(row["left"]) and int(row["left"]) + int(row["width"]) <= 3000 for row in rows)


def face_modes_folder(tmp_path) -> tuple:
    """A 48x48 noise 'crop' (no face a detector could find) and a blank photo."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(tmp_path / "crop.png")
    Image.new("L", (400, 300), 90).save(tmp_path / "photo.png")
    return tmp_path / "crop.png", tmp_path / "photo.png"


@pytest.mark.parametrize("mode, crop_row, photo_row", [
    ("auto", ("1", ""), ("0", NO_FACE)),  # a small image without a face is scored whole; a photo is not
    ("detect", ("0", NO_FACE), ("0", NO_FACE)),
    ("whole", ("1", ""), ("1", "")),
])
def test_face_modes(mode, crop_row, photo_row, tmp_path, tiny_model):
    crop, photo = face_modes_folder(tmp_path)
    out = tmp_path / "out.csv"
    assert main(["run", str(crop), str(photo), "--faces", mode, "--model", str(tiny_model), "-o", str(out)]) == 0
    rows = rows_of(out)
    assert [(row["face"], row["error"]) for row in rows] == [crop_row, photo_row]
    for row in rows:
        assert bool(row["emotion"]) == (row["face"] == "1")
        if row["face"] == "1":
            assert row["face_score"] == ""  # scored whole
    if mode == "whole":
        assert box_of(rows[1]) == (50, 0, 300, 300)  # the centred square that was scored


def test_faces_env_var_sets_the_default_mode_and_is_checked(tmp_path, tiny_model, monkeypatch, capsys):
    crop, _ = face_modes_folder(tmp_path)
    out = tmp_path / "out.csv"
    monkeypatch.setenv("FACES", "detect")
    assert main(["run", str(crop), "--model", str(tiny_model), "-o", str(out)]) == 0
    assert rows_of(out)[0]["error"] == NO_FACE
    monkeypatch.setenv("FACES", "sideways")
    assert main(["run", str(crop), "--model", str(tiny_model), "-o", str(out)]) == 2
    assert "FACES must be one of auto, detect, whole, not 'sideways'" in capsys.readouterr().err


@needs_photos
def test_a_large_jpeg_is_detected_at_reduced_scale_and_cropped_from_enough_resolution(monkeypatch):
    """A 4000x3000 JPEG decodes at 1/4 for detection; its face (135x158 px, 34x39 at 1/4) needs a finer decode
    to give the model 48x48 real pixels."""
    picture = canvas((4000, 3000))
    picture.paste(head(1.5), (2500, 1800))
    data = io.BytesIO()
    picture.save(data, "JPEG", quality=90)
    decodes = []
    real_decode = analysis_module.decode_gray

    def spy(image, scale=1.0):
        gray = real_decode(image, scale)
        decodes.append(gray.image.size)
        return gray
    monkeypatch.setattr(analysis_module, "decode_gray", spy)
    analysis = analyse(data.getvalue(), "detect", FaceDetector(), 48, 1)
    (face,) = analysis.faces
    assert box_iou(face.box, pasted_face_box((2500, 1800), 1.5)) >= 0.7
    assert decodes == [(1000, 750), (2000, 1500)]  # 1/4 for detection, then 1/2: the face is 68 px there
    reference = crop_face(picture.convert("L"), face.box)[:, :, 0].astype(int)
    assert np.abs(face.pixels[:, :, 0].astype(int) - reference).mean() < 4


def test_annotated_copy_names_stay_inside_the_folder():
    from batch_job.annotate import annotated_name

    assert str(annotated_name("a/b.png")) == "a/b.png.jpg"
    assert str(annotated_name("x/photo.JPG")) == "x/photo.JPG"
    assert str(annotated_name("../../etc/passwd")) == "etc/passwd.jpg"
    assert str(annotated_name("/abs/p.jpeg")) == "abs/p.jpeg"
    assert str(annotated_name("s3://bucket/k/1.png")) == "bucket/k/1.png.jpg"


@needs_photos
def test_annotate_writes_a_boxed_copy_of_each_scored_image(tmp_path, tiny_model):
    picture = canvas()
    picture.paste(head(0.8), (500, 300))
    (tmp_path / "in" / "sub").mkdir(parents=True)
    save(picture, tmp_path / "in" / "sub" / "face.jpg")
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out, drawn = tmp_path / "out.csv", tmp_path / "drawn"
    assert main(["run", str(tmp_path / "in"), "--annotate", str(drawn), "--model", str(tiny_model),
                 "-o", str(out)]) == 3
    assert sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*") if p.is_file()) == ["sub/face.jpg"]
    (row,) = [r for r in rows_of(out) if r["face"] == "1"]
    left, top, width, height = box_of(row)
    with Image.open(drawn / "sub" / "face.jpg") as copy:
        assert copy.size == picture.size
        pixels = np.asarray(copy.convert("RGB")).astype(int)
    with Image.open(tmp_path / "in" / "sub" / "face.jpg") as scored:
        original = np.asarray(scored.convert("RGB")).astype(int)
    edge = pixels[top + height // 2, left - 2:left + 3]  # the box's left side, half way down
    assert np.abs(edge - original[top + height // 2, left - 2:left + 3]).max() > 25  # something was drawn there
    assert np.abs(pixels[10:100, 10:100] - original[10:100, 10:100]).mean() < 6  # far away: only re-encoded


def parse_report(text: str) -> dict:
    """The totals, the per-emotion table, thumbnails and scripts of a report page (standard-library parser)."""
    from html.parser import HTMLParser

    found = {"totals": {}, "cells": [], "thumbnails": 0, "scripts": 0}
    stack: list[tuple[str, dict]] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            stack.append((tag, attrs))
            in_gallery = any(attrs.get("class") == "face" for _, attrs in stack[:-1])
            found["thumbnails"] += (tag == "img" and in_gallery
                                    and attrs.get("src", "").startswith("data:image/jpeg;base64,"))
            found["views"] = found.get("views", 0) + (tag == "img" and any(
                attrs.get("class") == "view" for _, attrs in stack[:-1]))
            found["scripts"] += tag == "script"
            if tag == "img":
                stack.pop()  # a void element

        def handle_endtag(self, tag):
            while stack and stack.pop()[0] != tag:
                pass

        def handle_data(self, data):
            ids = [attrs.get("id") for _, attrs in stack if attrs.get("id")]
            if stack and stack[-1][0] == "b" and ids and ids[-1] in ("images", "faces", "no_face", "errors"):
                found["totals"][ids[-1]] = int(data)
            if stack and stack[-1][0] == "td" and "per-emotion" in ids:
                found["cells"].append(data)

    Parser().feed(text)
    cells = found.pop("cells")
    found["per_emotion"] = dict(zip(cells[::2], map(int, cells[1::2]), strict=True))
    return found


@needs_photos
def test_html_report_counts_match_the_csv_and_shows_thumbnails(tmp_path, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    group = canvas((1200, 700))
    group.paste(head(0.6), (80, 100))
    group.paste(head(1.2), (600, 300))
    save(group, folder / "group.jpg")
    save(Image.new("RGB", (640, 480), (128, 128, 128)), folder / "blank.jpg")
    (folder / "<img src=x onerror=alert(1)>.png").write_bytes(b"broken")
    out, page_path = tmp_path / "out.csv", tmp_path / "report.html"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out)]) == 3
    rows = rows_of(out)
    assert main(["report", str(out), "--images", str(folder), "-o", str(page_path)]) == 0
    text = page_path.read_text()
    page = parse_report(text)
    faces = [row for row in rows if row["emotion"]]
    assert len(faces) == 2
    assert page["totals"] == {"images": 3, "faces": 2, "no_face": 1, "errors": 1}
    assert page["per_emotion"] == {c: sum(row["emotion"] == c for row in faces) for c in CLASSES}
    assert page["thumbnails"] == 2 and page["scripts"] == 0
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.<wbr>png" in text  # escaped
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


def test_report_refuses_a_csv_that_is_not_ours(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path / "x.csv"), "-o", str(tmp_path / "r.html")]) == 1
    assert "not a predictions CSV" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
