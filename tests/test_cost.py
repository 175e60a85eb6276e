"""The cost model (issue 19, 8-11): every path's parts follow the prices, the measured rates and the template's
defaults; the rates ship with the package."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batch_job.cli import main
from batch_job.cost import RATES_FILE, Prices, Rate, estimate, load_rates, rate_for, rates_from_bench, rekognition
from batch_job.sizing import for_memory
from tests.conftest import REPO

HUNDRED_MILLION = 100_000_000


def test_costs_scale_linearly_with_images():
    one, two = (estimate(n, "photos", rate=Rate(40, "t"), shards=4) for n in (10_000_000, 20_000_000))
    for name in ("upload_queue", "bulk", "batch"):
        assert two["paths"][name]["total"] == pytest.approx(2 * one["paths"][name]["total"], rel=1e-3)


def test_sqs_is_priced_per_image_not_per_invocation():
    result = estimate(HUNDRED_MILLION, "photos", rate=Rate(40, "t"))
    assert result["paths"]["upload_queue"]["sqs"] == pytest.approx(48.0)  # 1.2 requests x $0.40/M x 100M
    trickle = estimate(HUNDRED_MILLION, "crops", images_per_invocation=1, rate=Rate(400, "t"))
    assert trickle["paths"]["upload_queue"]["s3_put_outputs"] == pytest.approx(500.0)  # one output PUT per image


def test_lambda_compute_is_gb_seconds_at_the_measured_rate_times_the_memorys_vcpus():
    result = estimate(1_000_000, "photos", memory_mb=1769, rate=Rate(50, "t"))
    assert result["lambda_seconds"] == pytest.approx(1_000_000 / 50)
    assert result["paths"]["bulk"]["compute"] == pytest.approx(20_000 * 1769 / 1024 * 0.0000166667)


def test_bulk_children_follow_the_sizing_and_are_priced_as_express_executions():
    result = estimate(HUNDRED_MILLION, "photos", memory_mb=512, rate=Rate(40, "t"))
    items = for_memory(512).batch_items
    assert result["bulk_batch_items"] == items and result["bulk_children"] == -(-HUNDRED_MILLION // items)
    seconds = items / (40 * 512 / 1769) + 1
    per_child = 0.025 / 1000 + 1 / 1e6 + round(seconds + 0.049, 1) * 0.0625 * 0.00001667
    assert result["paths"]["bulk"]["step_functions"] == pytest.approx(result["bulk_children"] * per_child, rel=1e-3)


def test_batch_shards_list_the_whole_prefix_each_and_a_nat_costs_per_gigabyte():
    eight = estimate(HUNDRED_MILLION, "photos", rate=Rate(40, "t"), shards=8)
    assert eight["paths"]["batch"]["s3_list"] == pytest.approx(8 * 0.5)
    auto = estimate(HUNDRED_MILLION, "photos", rate=Rate(40, "t"))
    assert auto["batch_shards"] >= HUNDRED_MILLION / (40 * 4 * 6 * 3600)  # each child fits 6 of its 12 hours
    nat = estimate(HUNDRED_MILLION, "photos", rate=Rate(40, "t"), nat=True)
    assert nat["paths"]["batch"]["nat"] == pytest.approx(HUNDRED_MILLION * 200 / 1024 / 1024 * 0.045)  # ~$858


def test_rekognition_is_priced_by_its_monthly_tiers():
    prices = Prices()
    assert rekognition(1_000_000, prices) == pytest.approx(1000)
    assert rekognition(HUNDRED_MILLION, prices) == pytest.approx(1000 + 3200 + 18000 + 65_000_000 * 0.00025)


def test_the_shipped_rates_are_what_the_committed_bench_results_say():
    shipped = load_rates()
    assert shipped, RATES_FILE
    for cpu_class, entry in shipped.items():
        results = json.loads((REPO / "bench" / "results" / cpu_class / "results.json").read_text())
        assert rates_from_bench(results) == entry


def test_an_unmeasured_cpu_class_uses_the_slowest_measured_and_says_so():
    rates = {"a": {"photos": {"per_core": 30.0, "precision": "int8", "faces": "auto"}},
             "b": {"photos": {"per_core": 50.0, "precision": "int8", "faces": "auto"}}}
    assert rate_for("photos", "b", rates).per_vcpu == 50.0
    unknown = rate_for("photos", "aarch64-asimddp", rates)
    assert unknown.per_vcpu == 30.0 and "not measured" in unknown.source


def test_the_installed_package_reads_its_own_rates_outside_a_clone(tmp_path):
    code = ("import json, batch_job.cost as c; r = c.rate_for('photos', 'x86_64-vnni'); "
            "print(json.dumps([r.per_vcpu, str(c.RATES_FILE)]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    rate, path = json.loads(result.stdout)
    assert rate == load_rates()["x86_64-vnni"]["photos"]["per_core"] and path.endswith("batch_job/rates.json")


def test_cost_command_prints_every_path(capsys):
    assert main(["cost", "--images", "1000000", "--workload", "crops"]) == 0
    out = capsys.readouterr().out
    for name in ("upload_queue", "bulk", "batch", "rekognition", "dominated by", "crops"):
        assert name in out
