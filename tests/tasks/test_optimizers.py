"""The image task's AdamW runs as torch's foreach implementation (one op per step for all
tensors), which on CPU gives the same bits as torch's default per-tensor loop, so switching to it
changed no training number (the translation task's twin test is in test_translation.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from normrepro.config import resolve
from normrepro.tasks.image_classification.model import build_model
from normrepro.tasks.image_classification.module import build_optimizer

REPL = Path(__file__).resolve().parents[2] / "replications"


def _steps(model, opt, sched, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 1, 32, 32, generator=gen)
        loss = model(x).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("arm", ["ln", "bn"])
def test_image_optimizer_is_foreach_and_matches_the_loop(arm):
    cfg = resolve(REPL / "convnext", "smoke", arm, 0)
    torch.manual_seed(0)
    model = build_model(cfg["model"], 10, 1)
    twin = copy.deepcopy(model)
    opt, sched = build_optimizer(cfg, model, 1, 6, 1)
    assert opt.defaults["foreach"] is True
    loop, loop_sched = build_optimizer(cfg, twin, 1, 6, 1)
    for group in loop.param_groups:
        group["foreach"] = False
    a, b = _steps(model, opt, sched), _steps(twin, loop, loop_sched)
    assert all(torch.equal(u, v) for u, v in zip(a, b))

