"""The sync-BN cost measurement: exact collective counts and sizes, sane timings."""

from __future__ import annotations

import pytest

from normrepro.insights.sync_cost import measure_sync_cost

C_IMG, C_SEQ = 4, 6


def test_counts_and_timings_under_two_gloo_processes():
    cases = (("img", "sync_batch2d", (2, C_IMG, 3, 3)), ("seq", "sync_batch", (5, 2, C_SEQ)))
    df = measure_sync_cost(cases, world_size=2, iters=3, warmup=1).set_index("case")
    for case, C in (("img", C_IMG), ("seq", C_SEQ)):
        row = df.loc[case]
        assert row["collectives_per_step"] == 2
        assert row["floats_per_step"] == 2 * (2 * C + 1) + 2 * C  # moments of 2 workers; Σg, Σg·x̂
        assert row["local_collectives_per_step"] == 0
        for m in ("plain", "local", "sync", "allreduce"):
            assert 0 < row[f"{m}_ms"] < 10_000


def test_rejects_bad_cases():
    with pytest.raises(ValueError, match="world_size >= 2"):
        measure_sync_cost(world_size=1)
    with pytest.raises(ValueError, match="need"):
        measure_sync_cost((("x", "batch", (2, 3, 4)),))
