"""The translation bench's repeats: interleaved with the order alternating, medians reported
(the two trainings themselves are replaced by stand-ins: each real one takes a minute)."""

from __future__ import annotations

import json
from pathlib import Path

from normrepro.tasks.translation import bench

REPL = Path(__file__).resolve().parents[2] / "replications" / "powernorm"


def test_repeats_alternate_and_report_medians(tmp_path, monkeypatch):
    calls = []
    light = iter([100.0, 300.0, 200.0])
    fair = iter([100.0, 100.0, 400.0])
    monkeypatch.setattr(bench, "_lightning_tokens_per_s",
                        lambda cfg, data, warmup: calls.append("lightning") or next(light))
    monkeypatch.setattr(bench, "_fairseq_tokens_per_s",
                        lambda cfg, data, warmup, total: calls.append("fairseq") or next(fair))
    out = tmp_path / "bench.json"
    result = bench.bench(tmp_path, REPL, "smoke", out, warmup=10, updates=20, repeats=3)
    assert calls == ["lightning", "fairseq", "fairseq", "lightning", "lightning", "fairseq"]
    assert result["ratio_each"] == [1.0, 3.0, 0.5]
    assert result["ratio"] == 1.0                       # the median of the ratios
    assert result["lightning_tokens_per_s"] == 200.0 and result["fairseq_tokens_per_s"] == 100.0
    assert json.loads(out.read_text())["repeats"] == 3
