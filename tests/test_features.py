"""Issue 20: what users of fer, DeepFace and Rekognition expect: interrupted runs that keep their rows and
resume, detector controls and landmarks, annotations, the review report, video."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_job import api
from batch_job.cli import main
from tests.cloud_helpers import aws, get_text  # noqa: F401 - aws: a fixture
from tests.conftest import REPO, face_like


@pytest.fixture
def many(tmp_path) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        face_like(i).save(folder / f"{i:03d}.png")
    return folder


def interrupt_after(monkeypatch, count: int, error: BaseException) -> None:
    """The next run is interrupted (as Ctrl-C or a signal would) after `count` results."""
    real = api.Scorer.score_items

    def stopping(self, items, workers=None):
        for n, result in enumerate(real(self, items, workers)):
            if n == count:
                raise error
            yield result
    monkeypatch.setattr(api.Scorer, "score_items", stopping)


# 5. interrupted runs keep their rows; --resume finishes them ---------------------------------------------------

def test_5_an_interrupted_run_keeps_whole_rows_and_resume_equals_a_fresh_run(many, tiny_model, tmp_path,
                                                                             monkeypatch, capsys):
    fresh, out = tmp_path / "fresh.csv", tmp_path / "out.csv"
    assert main(["run", str(many), "--model", str(tiny_model), "-o", str(fresh)]) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 23, KeyboardInterrupt())
        assert main(["run", str(many), "--model", str(tiny_model), "-o", str(out)]) == 130
    err = capsys.readouterr().err
    partial = Path(str(out) + ".partial")
    assert "--resume" in err and str(partial) in err and not out.exists()
    assert partial.read_text().splitlines() == fresh.read_text().splitlines()[:24]  # header + 23 whole rows
    assert main(["run", str(many), "--model", str(tiny_model), "-o", str(out), "--resume"]) == 0
    assert "the first 23 inputs from the interrupted run" in capsys.readouterr().err
    assert out.read_bytes() == fresh.read_bytes() and not partial.exists()


def test_5_sigterm_keeps_the_rows_too(many, tiny_model, tmp_path):
    out = tmp_path / "out.csv"
    for i in range(60, 4000):
        face_like(i % 60).save(many / f"{i:04d}.png")
    process = subprocess.Popen([sys.executable, "-m", "batch_job", "run", str(many), "--model", str(tiny_model),
                                "-o", str(out), "--batch-size", "16", "--workers", "1", "--no-progress"], cwd=REPO,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".predictions-*.csv")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the output is checked (its temporary file made) right before scoring starts
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "--resume" in err and "Traceback" not in err, err
    rows = Path(str(out) + ".partial").read_text().splitlines()
    assert rows[0].startswith("path,face,") and len(rows) > 1


def test_5_resume_refuses_inputs_that_changed(many, tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.csv"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 10, KeyboardInterrupt())
        main(["run", str(many), "--model", str(tiny_model), "-o", str(out)])
    (many / "005.png").unlink()  # one of the inputs the partial output holds is gone
    assert main(["run", str(many), "--model", str(tiny_model), "-o", str(out), "--resume"]) == 1
    assert "inputs changed since the interrupted run" in capsys.readouterr().err


def test_5_an_s3_output_keeps_its_partial_beside_it_and_resumes(aws, many, tiny_model, monkeypatch,  # noqa: F811
                                                                capsys):
    import boto3
    from moto import mock_aws

    from batch_job import s3

    with mock_aws():
        s3.reset_client()
        client = boto3.client("s3")
        client.create_bucket(Bucket="outs")
        with monkeypatch.context() as patch:
            interrupt_after(patch, 7, KeyboardInterrupt())
            assert main(["run", str(many), "--model", str(tiny_model), "-o", "s3://outs/run.csv"]) == 130
        assert "s3://outs/run.csv.partial" in capsys.readouterr().err
        assert len(get_text(client, "outs", "run.csv.partial").splitlines()) == 8
        assert main(["run", str(many), "--model", str(tiny_model), "-o", "s3://outs/run.csv", "--resume"]) == 0
        rows = get_text(client, "outs", "run.csv").splitlines()
        assert len(rows) == 61 and [r.split(",")[0] for r in rows[1:]] == [f"{i:03d}.png" for i in range(60)]
        assert "run.csv.partial" not in [o["Key"] for o in client.list_objects_v2(Bucket="outs")["Contents"]]
        s3.reset_client()


def test_5_resume_without_a_partial_scores_everything(many, tiny_model, tmp_path, capsys):
    assert main(["run", str(many), "--model", str(tiny_model), "-o", str(tmp_path / "o.csv"), "--resume"]) == 0
    assert "no interrupted output" in capsys.readouterr().err
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 61




# 1. detector controls and landmarks -------------------------------------------------------------------------

def test_1_the_default_smallest_face_is_relative_to_the_image_with_a_floor():
    from batch_job.analysis import MIN_FACE_PX, default_min_face

    assert default_min_face(48, 48) == MIN_FACE_PX == 16  # a 5x9 px "face" in a crop is noise
    assert default_min_face(3000, 2171) == pytest.approx(43.42)  # Solvay's smallest face is 96 px


@pytest.mark.skipif(not (REPO.parent / "shared" / "photos" / "solvay_conference_1927.png").is_file(),
                    reason="shared photos missing")
def test_1_detector_controls_on_a_group_photo(tmp_path):
    solvay = REPO.parent / "shared" / "photos" / "solvay_conference_1927.png"
    scorer = api.Scorer(faces="detect", precision="fp32")
    everyone = scorer.score_image(str(solvay))
    assert len(everyone.faces) == 29  # the default minimum drops none of them
    areas = sorted((f.box[2] * f.box[3] for f in everyone.faces), reverse=True)
    largest = api.Scorer(faces="detect", precision="fp32", max_faces=3).score_image(str(solvay))
    assert [f.box[2] * f.box[3] for f in largest.faces] == areas[:3]  # the largest, by area
    big = api.Scorer(faces="detect", precision="fp32", min_face_size=120).score_image(str(solvay))
    assert 0 < len(big.faces) < 29 and all(max(f.box[2:]) >= 120 for f in big.faces)
    strict = api.Scorer(faces="detect", precision="fp32", threshold=0.95).score_image(str(solvay))
    assert len(strict.faces) < 29 and all(f.score >= 0.95 for f in strict.faces)
    for face in everyone.faces:  # five points inside (or at) the face's box
        left, top, width, height = face.box
        assert len(face.landmarks) == 5
        assert all(left - width / 4 <= x <= left + width * 1.25 and top - height / 4 <= y <= top + height * 1.25
                   for x, y in face.landmarks)
    assert main(["run", str(solvay), "--faces", "detect", "--max-faces", "2", "--landmarks", "-o",
                 str(tmp_path / "s.jsonl")]) == 0
    import json

    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(records) == 2 and set(records[0]["landmarks"]) == {"right_eye", "left_eye", "nose", "mouth_right",
                                                                    "mouth_left"}


def test_1_landmarks_are_opt_in_columns_empty_for_whole_images(tiny_model, many, tmp_path):
    from batch_job.formats import LANDMARK_COLUMNS, columns

    assert not set(LANDMARK_COLUMNS) & set(columns())  # the default fields do not change
    assert main(["run", str(many), "--faces", "whole", "--model", str(tiny_model), "--landmarks", "-o",
                 str(tmp_path / "w.csv")]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert set(LANDMARK_COLUMNS) <= set(rows[0]) and all(row["nose_x"] == "" for row in rows)


@pytest.mark.parametrize("argv", [["--threshold", "1.5"], ["--threshold", "0"], ["--max-faces", "0"],
                                  ["--min-face-size", "-3"]])
def test_1_bad_detector_controls_are_usage_errors(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(tmp_path), *argv])
    assert stopped.value.code == 2


def test_1_the_api_refuses_bad_detector_controls(tiny_model):
    from batch_job.base import UsageError

    for bad in ({"threshold": 2.0}, {"max_faces": 0}, {"min_face_size": 0}):
        with pytest.raises(UsageError):
            api.Scorer(model=tiny_model, **bad)


# 3. annotations ----------------------------------------------------------------------------------------------

def test_3_labels_never_cover_another_label_or_face_when_there_is_room():
    from batch_job.annotate import _overlap, place_label

    faces = [(100.0, 100.0, 160.0, 170.0), (100.0, 175.0, 160.0, 245.0), (165.0, 100.0, 225.0, 170.0)]
    taken = list(faces)
    for face in faces:
        spot = place_label((70.0, 14.0), face, [t for t in taken if t is not face], (1000, 1000))
        assert all(_overlap(spot, other) == 0 for other in taken if other is not face), (face, spot)
        taken.append(spot)


def test_3_boxes_show_on_dark_and_light_pictures_and_full_size_is_kept(tmp_path, tiny_model):
    import numpy as np
    from PIL import Image

    from batch_job.annotate import draw
    from batch_job.results import FaceResult, ImageResult

    face = FaceResult(1, (20, 20, 60, 60), 0.9, np.array([0.1, 0.7, 0.1, 0.1]))
    for shade in (0, 255):
        picture = Image.new("RGB", (3000, 200), (shade, shade, shade))
        drawn = np.asarray(draw(picture, ImageResult("x.png", (face,)), None))
        assert drawn.shape[:2] == (200, 3000)  # max_side None: the original resolution
        across = {tuple(int(v) for v in p) for p in drawn[14:26, 50]}  # straight through the box's top edge
        assert (0, 0, 0) in across and (160, 160, 160) in across, (shade, across)  # dark line and neutral's grey
    assert np.asarray(draw(Image.new("RGB", (3000, 200)), ImageResult("x", (face,)))).shape[1] == 2048


# 2. the report as a review tool --------------------------------------------------------------------------------

def test_2_the_report_has_the_runs_header_histograms_labels_and_image_views(tmp_path, tiny_model):
    import json
    import re

    from batch_job.report import BINS
    from tests.test_faces import parse_report

    data = tmp_path / "data"
    for i, label in enumerate(["happy", "happy", "sad", "neutral", "surprise", "sad"]):
        (data / label).mkdir(parents=True, exist_ok=True)
        face_like(i, size=96).save(data / label / f"a_very_long_file_name_{i}.png")
    out, page_path = tmp_path / "out.csv", tmp_path / "report.html"
    assert main(["run", str(data), "--faces", "whole", "--model", str(tiny_model), "-o", str(out)]) == 0
    record = json.loads(Path(str(out) + ".run.json").read_text())
    assert record["faces"] == "whole" and record["model"]["graph_sha256"] and record["summary"].startswith("6 images")
    assert main(["report", str(out), "--images", str(data), "-o", str(page_path)]) == 0
    text = page_path.read_text()
    page = parse_report(text)
    assert page["totals"] == {"images": 6, "faces": 6, "no_face": 0, "errors": 0} and page["scripts"] == 0
    header = re.search(r"<header>.*?</header>", text).group(0)
    assert record["model"]["name"] in header and record["model"]["graph_sha256"][:12] in header
    assert "faces <b>whole</b>" in header and "6 images, 6 faces" in header
    hists = re.findall(r'<figure class=hist>.*?</figure>', text)
    assert len(hists) == 4 and all(h.count("<rect") == BINS for h in hists)
    rows = list(__import__("csv").DictReader(open(out)))
    right = sum(row["emotion"] == Path(row["path"]).parent.name for row in rows)
    assert f"accuracy <b>{right / 6:.1%}</b> on 6 labelled images" in text and "id=confusion" in text
    assert page["views"] == 6 and text.count("<table class=probs>") == 6
    assert "a_<wbr>very_<wbr>long_<wbr>file_<wbr>name_<wbr>0.<wbr>png" in text  # wraps between words only
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # one self-contained file


def test_2_a_report_without_labels_or_run_record_says_so(tmp_path, tiny_model, many):
    out = tmp_path / "o.csv"
    assert main(["run", str(many), "--faces", "whole", "--model", str(tiny_model), "-o", str(out)]) == 0
    Path(str(out) + ".run.json").unlink()
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "no run record" in text and "id=confusion" not in text


# 4. video ----------------------------------------------------------------------------------------------------

def make_clip(path: Path, seconds: float = 3.5, rate: int = 10, side: int = 96) -> Path:
    """A short MPEG-4 clip made here (no fixture files): `rate` frames a second of random faces."""
    av = pytest.importorskip("av")
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
    for i in range(round(seconds * rate)):
        for packet in stream.encode(av.VideoFrame.from_image(face_like(i % 7, size=side).convert("RGB"))):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_4_a_video_is_scored_frame_by_frame_at_the_fps_asked(tmp_path, tiny_model):
    import csv

    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "v.csv"
    assert main(["run", str(clip), "--model", str(tiny_model), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(int(r["frame"]), float(r["time_s"])) for r in rows] == [(0, 0.0), (10, 1.0), (20, 2.0), (30, 3.0)]
    assert all(r["emotion"] for r in rows) and list(rows[0])[:3] == ["path", "frame", "time_s"]
    assert main(["run", str(clip), "--model", str(tiny_model), "--fps", "2", "-o", str(out)]) == 0
    assert len(list(csv.DictReader(open(out)))) == 7  # 0, 0.5, ... 3.0 s


def test_4_videos_in_a_folder_beside_images_and_a_broken_video_is_an_error_row(tmp_path, tiny_model, capsys):
    import csv

    folder = tmp_path / "mixed"
    folder.mkdir()
    make_clip(folder / "b.mp4", seconds=1.0)
    face_like(1).save(folder / "a.png")
    (folder / "c.mov").write_bytes(b"not a video at all")
    out = tmp_path / "m.jsonl"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out)]) == 3
    import json

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"], r["frame"]) for r in records] == [("a.png", None), ("b.mp4", 0), ("c.mov", None)]
    assert "cannot decode video" in records[2]["error"]
    del csv


def test_4_without_the_video_extra_videos_are_skipped_and_counted(tmp_path, tiny_model, monkeypatch, capsys):
    from batch_job import video

    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0)
    monkeypatch.setattr(video, "available", lambda: False)
    assert main(["run", str(clip), "--model", str(tiny_model), "-o", str(tmp_path / "o.csv")]) == 0
    err = capsys.readouterr().err
    assert "1 video skipped" in err and "emotion-batch-scoring[video]" in err and "no image" not in err
