"""The cost estimator: arithmetic that follows the prices and the measured throughput."""
from __future__ import annotations

import json

import pytest

from batch_job.cli import main
from batch_job.cost import Prices, Throughput, estimate


def test_costs_scale_linearly_with_images():
    one = estimate(100_000, throughput=Throughput(500))
    two = estimate(200_000, throughput=Throughput(500))
    for name in one["platforms"]:
        assert two["platforms"][name]["total"] == pytest.approx(2 * one["platforms"][name]["total"], rel=1e-3)


def test_lambda_compute_is_gb_seconds_times_price():
    result = estimate(1_000_000, memory_mb=1769, images_per_invocation=10, throughput=Throughput(1000))
    seconds = 1_000_000 / 1000  # one full vCPU at 1,769 MB
    assert result["lambda_seconds"] == pytest.approx(seconds)
    assert result["platforms"]["lambda"]["compute"] == pytest.approx(seconds * 1769 / 1024 * 0.0000166667)
    assert result["lambda_invocations"] == 100_000


def test_s3_requests_dominate_when_compute_is_cheap():
    result = estimate(1_000_000, throughput=Throughput(5000))
    assert result["platforms"]["batch_fargate"]["dominant"] == "s3_reads"
    assert result["platforms"]["batch_fargate"]["s3_reads"] == pytest.approx(1_000_000 * 0.0004 / 1000 + 1000 * 0.005 / 1000)


def test_price_overrides_change_the_estimate():
    cheap = estimate(10_000, prices=Prices(s3_get=0.0), throughput=Throughput(500))
    assert cheap["platforms"]["batch_fargate"]["s3_reads"] == pytest.approx(10 * 0.005 / 1000)


def test_throughput_is_read_from_bench_results(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"end_to_end": {"images_per_second_per_core": 321.0}}))
    assert Throughput.from_bench(path).per_vcpu == 321.0
    assert Throughput.from_bench(tmp_path / "missing.json").source.startswith("default")


def test_cost_command_prints_every_platform(capsys):
    assert main(["cost", "--images", "1000000", "--memory-mb", "2048"]) == 0
    out = capsys.readouterr().out
    for name in ("lambda", "batch_fargate", "gpu_instance", "dominated by"):
        assert name in out


def test_throughput_is_read_for_this_cpu_class_photos_or_crops_and_precision(tmp_path, monkeypatch):
    from batch_job import precision

    for kind, rate in (("x86_64-vnni", 900.0), ("x86_64-avx2", 400.0)):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "results.json").write_text(json.dumps({
            "cpu": {"cores": 2},
            "end_to_end": {"images_per_second_per_core": rate},
            "end_to_end_int8": {"images_per_second_per_core": 2 * rate},
            "photos": {"end_to_end_fp32": {"photos_per_second": rate / 10}}}))
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert Throughput.from_bench(tmp_path).per_vcpu == 400.0  # this machine's class, not the newest file
    assert Throughput.from_bench(tmp_path, precision="int8").per_vcpu == 800.0
    assert Throughput.from_bench(tmp_path, photos=True).per_vcpu == 20.0  # 40 photos/s on 2 cores
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    assert Throughput.from_bench(tmp_path).per_vcpu == 900.0


def test_the_estimate_shows_what_a_managed_api_would_charge():
    result = estimate(1_000_000, throughput=Throughput(500))
    managed = result["platforms"]["managed_api"]
    assert managed["compute"] == pytest.approx(1_000.0)  # $0.001 an image
    assert managed["total"] > 100 * result["platforms"]["lambda"]["total"]
