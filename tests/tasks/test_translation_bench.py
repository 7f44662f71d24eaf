"""The translation bench's repeats: interleaved with the order alternating, medians reported
(the two trainings themselves are replaced by stand-ins: each real one takes a minute)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normrepro.tasks.translation import bench

REPL = Path(__file__).resolve().parents[2] / "replications" / "powernorm"


def test_repeats_alternate_and_report_medians(tmp_path, monkeypatch):
    calls = []
    light = iter([100.0, 300.0, 200.0])
    fair = iter([100.0, 100.0, 400.0])
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: False)  # (malloc as it comes)
    monkeypatch.setattr(bench, "_lightning_tokens_per_s",
                        lambda cfg, data, warmup: calls.append("lightning") or next(light))
    monkeypatch.setattr(bench, "_fairseq_tokens_per_s",
                        lambda cfg, data, warmup, total, extra_env=None: calls.append("fairseq") or next(fair))
    out = tmp_path / "bench.json"
    result = bench.bench(tmp_path, REPL, "smoke", out, warmup=10, updates=20, repeats=3)
    assert calls == ["lightning", "fairseq", "fairseq", "lightning", "lightning", "fairseq"]
    assert result["ratio_each"] == [1.0, 3.0, 0.5]
    assert result["ratio"] == 1.0                       # the median of the ratios
    assert result["lightning_tokens_per_s"] == 200.0 and result["fairseq_tokens_per_s"] == 100.0
    assert json.loads(out.read_text())["repeats"] == 3
    assert "ratio_same_malloc" not in result and result["malloc"] == "both as the system sets it"


def test_fairseq_also_runs_with_the_lightning_sides_malloc_setting(tmp_path, monkeypatch):
    """Where the Lightning side keeps freed memory (glibc), fairseq-train runs a second time per
    repeat with the same setting, passed as glibc's environment variables."""
    calls = []
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: True)
    monkeypatch.setattr(bench, "_lightning_tokens_per_s",
                        lambda cfg, data, warmup: calls.append("lightning") or 120.0)

    def fairseq(cfg, data, warmup, total, extra_env=None):
        calls.append("kept" if extra_env else "fairseq")
        assert extra_env in (None, bench.KEEP_FREED_MEMORY_ENV)
        return 150.0 if extra_env else 100.0

    monkeypatch.setattr(bench, "_fairseq_tokens_per_s", fairseq)
    result = bench.bench(tmp_path, REPL, "smoke", tmp_path / "b.json", warmup=10, updates=20, repeats=2)
    assert calls == ["lightning", "fairseq", "kept", "kept", "fairseq", "lightning"]
    assert result["ratio"] == pytest.approx(1.2) and result["ratio_same_malloc"] == pytest.approx(0.8)
    assert set(bench.KEEP_FREED_MEMORY_ENV) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}


def test_lightning_rates_are_per_interval_like_fairseq_wps():
    # Intervals of 2 updates; the first timed update starts at t=10. Update ends at 11, 12 (closes
    # interval 1: 300 tokens / 2 s), 13, 15 (closes interval 2: 300 tokens / 3 s); the open third
    # interval (one update) is not counted, as fairseq logs only complete intervals.
    r = bench.IntervalRates(2)
    r.update_end(2, 5.0)                 # before start: ignored
    assert not r.started
    r.start(10.0)
    for k, (tok, t) in enumerate([(100, 11.0), (200, 12.0), (150, 13.0), (150, 15.0), (999, 16.0)], 1):
        r.tokens(tok)
        r.update_end(k, t)
    assert r.rates == [150.0, 100.0]
    assert r.mean() == 125.0             # the mean of the rates (fairseq's mean of `wps`)


def test_no_complete_interval_is_an_error():
    r = bench.IntervalRates(10)
    r.start(0.0)
    r.tokens(5)
    r.update_end(3, 1.0)
    with pytest.raises(RuntimeError, match="no complete interval"):
        r.mean()
