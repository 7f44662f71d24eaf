"""Tests of `make bench-norms` (normrepro.bench_norms) at a tiny size: the interleaved timing's
JSON (ratios, targets) and the profiler summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from normrepro import bench_norms


def test_bench_reports_per_round_ratios_and_targets():
    res = bench_norms.bench(T=4, B=4, C=8, rounds=2, iters=1, names=["batch", "rms"],
                            malloc="system")
    assert set(res["results"]) == {bench_norms.BASELINE, "batch", "rms"}
    assert res["malloc"] == "as the system sets it"
    assert all(r["page_faults_per_call"] >= 0 for r in res["results"].values())
    assert res["results"][bench_norms.BASELINE]["ratio_to_layernorm"] == pytest.approx(1.0)
    for name in ("batch", "rms"):
        r = res["results"][name]
        assert r["target_ratio"] == bench_norms.TARGETS[name]
        assert r["meets_target"] == (r["ratio_to_layernorm"] <= r["target_ratio"])
    json.dumps(res, default=str)


def test_default_keeps_freed_memory_in_its_own_process(tmp_path):
    """The default run makes glibc keep freed memory (in the benchmark's own process): after
    warm-up, calls on the same shapes fault in less than one (T, B, C) tensor's pages (2,048)
    per call on average, where mapping each call's output and gradient afresh would cost over
    4,000. (The heap may still grow once in a round; `tests/test_runtime.py` checks that a
    typical round faults in nothing.)"""
    out = tmp_path / "norms.json"
    subprocess.run([sys.executable, "-m", "normrepro.bench_norms", "--out", str(out), "--rounds", "3",
                    "--iters", "5", "--norms", "layer"], check=True, capture_output=True)
    res = json.loads(out.read_text())
    if res["malloc"] == "as the system sets it":
        pytest.skip("not glibc")
    assert res["malloc"].startswith("glibc keeps freed memory")
    assert res["results"]["layer"]["page_faults_per_call"] < 2048


def test_unknown_case_is_a_user_error():
    with pytest.raises(bench_norms.UserError, match="unknown"):
        bench_norms.bench(T=4, B=4, C=8, rounds=1, iters=1, names=["batchnorm"])


def test_profile_writes_a_summary_and_one_table_per_case():
    md = bench_norms.profile(T=4, B=4, C=8, names=["group"], calls=1)
    assert "| case | self time per call (ms) | / LayerNorm |" in md
    assert md.count("\n### ") == 2 and "### group" in md
