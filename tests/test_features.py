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


