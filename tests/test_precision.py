"""fp32 or INT8: the choice by CPU features, the INT8 graphs' model cards, and INT8 scoring through the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from batch_job.base import ModelError
from batch_job.cli import main
from batch_job.model import EmotionModel
from batch_job.precision import VNNI, choose, cpu_flags, int8_info, int8_path, resolve
from batch_job.results import CLASSES
from tests.conftest import REPO, SHARED_DATA, needs_data

MODELS = REPO / "models"
PORTABLE = {"reduce_range": True}
VNNI_ONLY = {"reduce_range": False}


@pytest.mark.parametrize("precision, flags, machine, int8, expected", [
    ("auto", {"avx2", "avx512_vnni"}, "x86_64", VNNI_ONLY, "int8"),  # VNNI: the fast kernels are exact
    ("auto", {"avx2", "avx_vnni"}, "x86_64", VNNI_ONLY, "int8"),
    ("auto", {"avx2"}, "x86_64", VNNI_ONLY, "fp32"),  # no VNNI, 8-bit weights: the u8s8 kernels may saturate
    ("auto", {"avx2"}, "x86_64", PORTABLE, "int8"),  # 7-bit weights: no saturation anywhere
    ("auto", {"sse4_2"}, "x86_64", PORTABLE, "fp32"),  # too old to gain
    ("auto", {"asimd", "asimddp"}, "aarch64", PORTABLE, "fp32"),  # Arm kernels not measured
    ("auto", {"avx512_vnni"}, "x86_64", None, "fp32"),  # no INT8 graph shipped
    ("fp32", {"avx512_vnni"}, "x86_64", PORTABLE, "fp32"),
    ("int8", set(), "aarch64", None, "int8"),  # asked for: honoured
])
def test_the_precision_is_chosen_by_cpu_features(precision, flags, machine, int8, expected):
    assert resolve(precision, flags, machine, int8) == expected


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp32, int8, auto"):
        resolve("int4", set(), "x86_64", None)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512_vnni\n\n")
    assert cpu_flags(str(info)) == {"fpu", "sse", "avx2", "avx512_vnni"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(str(info)) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    assert VNNI <= {"avx512_vnni", "avx_vnni", "amx_int8"}


def test_asking_for_int8_without_an_int8_graph_is_a_clear_error(tmp_path):
    fp32 = tmp_path / "emotion.onnx"
    fp32.write_bytes(b"")
    with pytest.raises(ModelError, match="no INT8 graph"):
        choose("int8", fp32)
    assert choose("fp32", fp32) == fp32 and choose("auto", fp32) == fp32  # auto falls back without one


@pytest.mark.parametrize("name", ["emotion.onnx", "face_detection_yunet.onnx"])
def test_both_graphs_carry_the_same_model_card(name):
    import onnx

    fp32, int8 = MODELS / name, int8_path(MODELS / name)
    report = json.loads((MODELS / "int8.json").read_text())
    chosen = report["emotion_chosen" if name == "emotion.onnx" else "detector_chosen"]
    if chosen is None:  # no candidate was accurate and faster: nothing may ship, and fp32 runs
        assert not int8.exists() and choose("int8", fp32, required=False) == fp32
        return
    assert int8.is_file(), f"{int8} missing: python -m converter.quantize"
    cards = [{p.key: p.value for p in onnx.load(str(path)).metadata_props} for path in (fp32, int8)]
    info = json.loads(cards[1].pop("int8"))
    for card in cards:  # each graph is sealed on its own: its digest and reference outputs are its own
        assert card.pop("graph_sha256") and card.pop("reference")
    assert cards[0] == cards[1]
    assert info == int8_info(int8) and info["candidate"] and "measured" in info
    if name == "emotion.onnx":
        drop = 100 * (info["fp32"]["validation_unique"] - info["measured"]["validation_unique"])
        assert drop <= 0.5  # the converter's rule, as measured when it was made
        assert EmotionModel(int8).card.classes == CLASSES


@needs_data
def test_int8_scores_like_fp32_through_the_cli(tmp_path):
    outs = {}
    for precision in ("fp32", "int8"):
        outs[precision] = tmp_path / f"{precision}.csv"
        assert main(["run", str(SHARED_DATA / "test"), "-o", str(outs[precision]), "--faces", "whole",
                     "--precision", precision]) == 0
    rows = {p: list(csv.DictReader(open(outs[p]))) for p in outs}
    probs = {p: np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows[p]]) for p in rows}
    agree = np.mean(probs["fp32"].argmax(1) == probs["int8"].argmax(1))
    assert agree >= 0.95 and np.abs(probs["fp32"] - probs["int8"]).mean() < 0.02
