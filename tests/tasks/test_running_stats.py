"""Recomputing BN/PN running statistics after checkpoint averaging (issue 9, point 4).

`normrepro.running_stats` against by-hand float64 references (the recomputed statistic is the
mean of the per-batch statistics), what it must leave alone (weights, counters, PowerNorm's
backward state, modes, the global RNG), and the `recompute_stats` + `evaluate` stages on tiny
data: both evaluations written, each with the statistics it names.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from torch import nn

from normrepro.config import resolve
from normrepro.norms import create_norm, eager_kernels
from normrepro.running_stats import recompute_running_stats, running_stat_keys

from test_translation import REPL, build, tiny_data, tiny_model_cfg  # noqa: F401  (tiny_data: fixture)

EPS = 1e-5
C = 4


def _batches(n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x (T, B, C), pad_mask (B, T)) in float64, different scales and paddings per batch."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        T, B = 6 + k, 5
        x = torch.randn(T, B, C, generator=g, dtype=torch.float64) * (1 + k) + torch.arange(C) * 0.3 * (k - 1)
        pm = torch.zeros(B, T, dtype=torch.bool)
        pm[0, : 2 + k] = True  # left padding of one sentence
        pm[3, -1] = True
        out.append((x, pm))
    return out


def _real(pm: torch.Tensor) -> torch.Tensor:
    return ~pm.t()  # (T, B), True at real tokens


def _group_scale(x: torch.Tensor, groups: int) -> torch.Tensor:
    T, B, _ = x.shape
    xv = x.reshape(T, B, groups, C // groups)
    return (xv / torch.sqrt(xv.pow(2).mean(-1, keepdim=True) + EPS)).reshape(T, B, C)


def _reference(name: str, x: torch.Tensor, pm: torch.Tensor) -> dict:
    """The per-batch statistic(s) that the norm's running statistic averages, by hand."""
    real = _real(pm)
    if name == "batch":
        r = x[real]
        return {"running_mean": r.mean(0), "running_var": r.var(0, unbiased=True)}
    if name == "bn_official":
        z = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        z = torch.where(real.unsqueeze(-1), z, z[real].mean(0))
        flat = z.reshape(-1, C)
        return {"running_mean": flat.mean(0), "running_var": flat.var(0, unbiased=True)}
    if name == "power":
        return {"running_phi": _group_scale(x, 2)[real].pow(2).mean(0)}
    if name == "power_vanilla":
        return {"running_phi": x[real].pow(2).mean(0)}
    raise KeyError(name)


def _norm(name: str) -> nn.Module:
    kwargs = {"group_num": 2, "warmup_iters": 4} if name == "power" else {}
    return create_norm(name, C, **kwargs).double()


def _spoil(module: nn.Module) -> None:
    """Running statistics that belong to no weights at all, and counters in mid-training."""
    for key, buf in module.state_dict().items():
        if key.endswith(("running_mean", "running_phi")):
            buf.fill_(1e6)
        elif key.endswith("running_var"):
            buf.fill_(float("nan"))
        elif key.endswith(("iters", "num_batches_tracked")):
            buf.fill_(123)
        elif key.endswith("ema_gz"):
            buf.copy_(torch.linspace(-1, 1, buf.numel(), dtype=buf.dtype))


def _call(model, batch):
    return model(*batch)


@pytest.mark.parametrize("name", ["batch", "bn_official", "power", "power_vanilla"])
def test_recomputed_statistics_are_the_mean_of_the_per_batch_statistics(name):
    norm = _norm(name)
    _spoil(norm)
    batches = _batches(4)
    info = recompute_running_stats(norm, batches, _call)
    assert info == {"modules": [""], "batches": 4}
    refs = [_reference(name, x, pm) for x, pm in batches]
    for key in refs[0]:
        expected = torch.stack([r[key] for r in refs]).mean(0)
        assert torch.allclose(getattr(norm, key), expected, rtol=1e-12, atol=1e-12), key
    # the same result from a fresh module: nothing of the old statistics survives
    fresh = _norm(name)
    recompute_running_stats(fresh, batches, _call)
    for key in refs[0]:
        assert torch.allclose(getattr(norm, key), getattr(fresh, key), rtol=1e-12, atol=0), key


class _Chain(nn.Module):
    """Two sequence norms in a row with a dropout between them (as in a transformer layer)."""

    def __init__(self, name: str, dropout: float = 0.0):
        super().__init__()
        self.a, self.b = _norm(name), _norm(name)
        self.drop = nn.Dropout(dropout)
        g = torch.Generator().manual_seed(1)
        for m in (self.a, self.b):
            with torch.no_grad():
                m.weight.copy_(1 + 0.5 * torch.rand(C, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))

    def forward(self, x, pm):
        return self.b(self.drop(self.a(x, pm)), pm)


def test_powernorm_after_warm_up_is_recomputed_on_batch_statistics():
    """After its warm-up PowerNorm normalises training batches with running_phi; recomputing must
    not feed the next layer what stale statistics make of the batch, but what the batch's own
    ψ² does (as BatchNorm in train mode), and must leave the step counter where it was."""
    model = _Chain("power")
    _spoil(model)  # iters = 123 > warmup_iters = 4, running_phi = 1e6
    batches = _batches(7)  # more batches than the warm-up is long
    recompute_running_stats(model, batches, _call)
    phi_b = []
    for x, pm in batches:
        psi_a = _reference("power", x, pm)["running_phi"]
        y = _group_scale(x, 2) / torch.sqrt(psi_a + EPS) * model.a.weight.detach() + model.a.bias.detach()
        phi_b.append(_reference("power", y, pm)["running_phi"])
    assert torch.allclose(model.b.running_phi, torch.stack(phi_b).mean(0), rtol=1e-10, atol=0)
    assert int(model.a.iters) == 123 and int(model.b.iters) == 123
    assert model.a.warmup_iters == 4 and model.a.alpha_fwd == 0.9


@pytest.mark.parametrize("name", ["batch", "bn_official", "power", "power_vanilla"])
def test_only_running_statistics_change(name):
    model = _Chain(name, dropout=0.3)
    _spoil(model)
    if hasattr(model.a, "record_stats"):
        model.a.record_stats = True
    model.eval()
    model.b.train()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {k: v for k, v in vars(model.a).items() if not k.startswith("_") and not isinstance(v, dict)}
    rng = torch.get_rng_state()
    recompute_running_stats(model, _batches(3), _call, seed=5)
    keys = set(running_stat_keys(model))
    assert keys and keys == {k for k in before if k.endswith(("running_mean", "running_var", "running_phi"))}
    after = model.state_dict()
    for k, v in before.items():
        if k in keys:
            assert not torch.allclose(after[k], v, equal_nan=True), f"{k} was not recomputed"
        else:
            assert torch.equal(after[k], v), f"{k} changed"  # weights, counters, PowerNorm's ema_gz
    assert {k: v for k, v in vars(model.a).items() if k in attrs} == attrs  # momentum, flags, warm-up
    assert not model.training and not model.a.training and model.b.training
    assert torch.equal(torch.get_rng_state(), rng)
    # deterministic for a seed; the seed drives the dropout masks
    again = _Chain(name, dropout=0.3)
    recompute_running_stats(again, _batches(3), _call, seed=5)
    other = _Chain(name, dropout=0.3)
    recompute_running_stats(other, _batches(3), _call, seed=6)
    for k in keys:
        assert torch.equal(again.state_dict()[k], after[k]), k
    assert any(not torch.equal(other.state_dict()[k], after[k]) for k in keys)


def test_layernorm_model_is_left_alone_without_a_forward_pass():
    model = nn.Sequential(create_norm("layer", C), create_norm("rms", C), create_norm("group", C, num_groups=2))
    before = copy.deepcopy(model.state_dict())
    calls = []
    info = recompute_running_stats(model, _batches(2), lambda m, b: calls.append(b))
    assert info == {"modules": [], "batches": 0} and calls == [] and running_stat_keys(model) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["batch", "bn_official", "power", "power_vanilla"])
def test_garbage_statistics_are_replaced_by_sensible_ones(name):
    """Eval-mode output with garbage running statistics is garbage; after recomputing on one
    batch it is that batch's train-mode output (exactly where the running statistic is the
    batch statistic; up to the unbiased variance's n/(n−1) for the BatchNorms)."""
    norm = _norm(name)
    _spoil(norm)
    x, pm = _batches(1, seed=3)[0]
    x = torch.cat([x] * 8, dim=1)  # 40 sentences: n/(n−1) close to 1
    pm = torch.cat([pm] * 8, dim=0)
    real = _real(pm).unsqueeze(-1)
    trained = copy.deepcopy(norm).train()
    if name == "power":
        trained.iters.zero_()  # within the warm-up: normalised with the batch's own ψ²
    with eager_kernels():
        want = torch.where(real, trained(x, pm).detach(), 0)  # train mode: batch statistics only
    tol = 1e-10 if name.startswith("power") else 2e-2

    def eval_output():
        with torch.no_grad():
            return torch.where(real, norm.eval()(x, pm), 0)

    assert not torch.allclose(eval_output(), want, rtol=tol, atol=tol)
    recompute_running_stats(norm, [(x, pm)], _call)
    assert torch.isfinite(eval_output()).all()
    assert torch.allclose(eval_output(), want, rtol=tol, atol=tol)


def test_a_norm_it_does_not_know_is_an_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("running_scale", torch.ones(C))

    with pytest.raises(TypeError, match="running_scale"):
        recompute_running_stats(nn.Sequential(_norm("batch"), Odd()), _batches(1), _call)


def test_an_interrupted_pass_changes_nothing():
    model = _Chain("bn_official")
    _spoil(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def failing(m, b):
        m(*b)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        recompute_running_stats(model, _batches(2), failing)
    with pytest.raises(ValueError, match="no batches"):
        recompute_running_stats(model, [], _call)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v) or torch.allclose(model.state_dict()[k], v, rtol=0, atol=0,
                                                                        equal_nan=True), k
    assert model.a.momentum == 0.05 and model.a.num_batches_tracked == 123


# ------------------------------------------------------------------ stages: recompute + evaluate

def _run_dir(tmp_path, data, encoder_norm: str):
    """A run folder as `average` leaves it: config.yaml, two snapshots whose running statistics
    differ wildly (as early in training), and their average."""
    from normrepro.tasks.translation.average import average_run
    from normrepro.tasks.translation.datamodule import load_dictionary

    run = tmp_path / encoder_norm / "seed1"
    (run / "checkpoints").mkdir(parents=True)
    cfg = resolve(REPL, "smoke", "bn", seed=1)
    cfg["model"] = tiny_model_cfg(encoder_norm=encoder_norm)
    cfg["data"]["max_tokens"] = 60
    cfg["eval"].update(beam=2, max_len_b=5, recompute_stats_batches=3)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    model = build(cfg["model"], load_dictionary(data))
    for i, updates in enumerate((10, 20)):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for k, v in state.items():
            if k.endswith(("running_mean", "running_phi")):
                v.add_(3.0 * (i + 1))
            elif k.endswith("running_var"):
                v.mul_(40.0 * (i + 1))
        torch.save({"model": state, "updates": updates, "epoch": 1, "val_loss": 1.0},
                   run / "checkpoints" / f"snapshot_u{updates:07d}.pt")
    average_run(run, last=2)
    return run


@pytest.mark.parametrize("encoder_norm", ["bn_official", "power", "layer"])
def test_recompute_stage_and_evaluate_write_both_results(tiny_data, tmp_path, monkeypatch, encoder_norm):  # noqa: F811
    from normrepro.errors import CheckpointError
    from normrepro.tasks.translation import evaluate as ev
    from normrepro.tasks.translation.recompute_stats import recompute_run, training_batches

    run = _run_dir(tmp_path, tiny_data, encoder_norm)
    averaged = torch.load(run / "checkpoints" / "averaged.pt", weights_only=True)["model"]
    res = recompute_run(run, tiny_data)
    stored = torch.load(run / "checkpoints" / "running_stats.pt", weights_only=True)
    keys = sorted(stored["buffers"])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    _, chosen = training_batches(cfg, tiny_data, 3)
    if encoder_norm == "layer":
        assert res["status"] == stored["status"] == "no_running_stats" and keys == [] and res["batches"] == 0
    else:
        assert res["status"] == "ok" and res["batches"] == len(chosen) == 3
        assert keys and all(k.startswith("encoder.") for k in keys)
        assert res["sentences"] == sum(len(b) for b in chosen)
        for k in keys:  # the averaged (spoiled) statistics are gone
            assert not torch.allclose(stored["buffers"][k], averaged[k])
        again = recompute_run(run, tiny_data, out=tmp_path / "again.pt")
        assert all(torch.equal(again["buffers"][k], stored["buffers"][k]) for k in keys)  # deterministic

    # record which statistics each evaluation ran with
    seen = []
    original = ev.evaluate_set

    def spy(model, dictionary, data_dir, hyps_dir, name, *args):
        state = model.state_dict()
        seen.append((hyps_dir.name, name, {k: state[k].detach().cpu().clone() for k in keys}))
        return original(model, dictionary, data_dir, hyps_dir, name, *args)

    monkeypatch.setattr(ev, "evaluate_set", spy)
    final = ev.evaluate_run(run, tiny_data, [tiny_data / "ood-toy-de-en"])
    on_disk = json.loads((run / "final.json").read_text())
    assert on_disk["test_bleu_tok"] == final["test_bleu_tok"]
    for key in ("test_bleu_tok", "test_bleu_sacre", "toy_bleu_tok", "test_avgstats_bleu_tok",
                "test_avgstats_bleu_sacre"):
        assert isinstance(on_disk[key], float), key
    rs = on_disk["running_stats"]
    assert rs["primary"] == "recomputed" and rs["recomputed"]["batches"] == res["batches"]
    primary = [s for s in seen if s[0] == "hyps"]
    secondary = [s for s in seen if s[0] == "averaged_stats"]
    assert [s[1] for s in primary] == ["test", "toy"]
    for _, _, state in primary:
        assert all(torch.equal(state[k], stored["buffers"][k]) for k in keys)
    if encoder_norm == "layer":
        assert secondary == [] and rs["averaged"]["same_as_primary"]
        assert on_disk["test_avgstats_bleu_tok"] == on_disk["test_bleu_tok"]
        assert not (run / "hyps" / "averaged_stats").exists()
    else:
        assert [s[1] for s in secondary] == ["test"] and not rs["averaged"]["same_as_primary"]
        assert all(torch.equal(secondary[0][2][k], averaged[k]) for k in keys)
        assert len((run / "hyps" / "averaged_stats" / "test.tok.txt").read_text().splitlines()) == 13
        # statistics computed for another averaged.pt are refused
        torch.save({"model": averaged, "averaged": [], "updates": [0]}, run / "checkpoints" / "averaged.pt")
        with pytest.raises(CheckpointError, match="another averaged.pt"):
            ev.evaluate_run(run, tiny_data, [])
    # the summary carries the secondary as its own metric
    from normrepro.tasks.translation import metric_keys

    assert metric_keys([run])[-2:] == ["test_avgstats_bleu_tok", "test_avgstats_bleu_sacre"]
    assert "toy_bleu_tok" in metric_keys([run]) and "test_avgstats_bleu_tok" not in metric_keys([run])[:4]


def test_recompute_off_keeps_the_old_single_evaluation(tiny_data, tmp_path):  # noqa: F811
    from normrepro.tasks.translation.evaluate import evaluate_run
    from normrepro.tasks.translation.recompute_stats import recompute_run

    run = _run_dir(tmp_path, tiny_data, "bn_official")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["recompute_stats_batches"] = 0
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert recompute_run(run, tiny_data)["status"] == "disabled"
    final = evaluate_run(run, tiny_data, [])
    assert "running_stats" not in final and "test_avgstats_bleu_tok" not in final


def test_report_states_primary_and_secondary(tmp_path):
    """The report's running-statistics section from hand-made summary rows: both treatments per
    arm, the per-seed effect, and each claim's verdict under the averaged statistics."""
    import pandas as pd

    from normrepro.paper import load_paper
    from normrepro.summary import summarize_runs
    from normrepro.tasks.translation.report import running_stats_lines

    rows = []
    for seed in (1, 2, 3):
        rows.append({"arm": "ln", "seed": seed, "status": "ok", "test_bleu_tok": 20.0 + seed * 0.1,
                     "test_avgstats_bleu_tok": 20.0 + seed * 0.1})
        rows.append({"arm": "bn", "seed": seed, "status": "ok", "test_bleu_tok": 19.0 + seed * 0.1,
                     "test_avgstats_bleu_tok": 15.0 + seed * 0.2})
        rows.append({"arm": "pn", "seed": seed, "status": "ok", "test_bleu_tok": 21.0 + seed * 0.1,
                     "test_avgstats_bleu_tok": 19.0 + seed * 0.05})
    runs = pd.DataFrame(rows)
    metrics = ["test_bleu_tok", "test_avgstats_bleu_tok"]
    summary = summarize_runs(runs, metrics, pairs=[("ln", "pn"), ("bn", "ln")], arm_order=["ln", "bn", "pn"])
    details = [{"row": r, "final.json": {"running_stats": {
        "recomputed": {"batches": 100}, "averaged": {"same_as_primary": r["arm"] == "ln"}}}} for r in rows]
    paper = load_paper(REPL / "paper.yaml")
    cfg = {"eval": {"recompute_stats_batches": 100}}
    text = "\n".join(running_stats_lines(summary, runs, details, paper, cfg))
    assert "**Primary**" in text and "**Secondary**" in text and "update_bn" in text
    assert "identical (no running statistics)" in text  # ln
    assert "+3.80 ±" in text  # bn: recomputed − averaged = 4 − 0.1·seed, mean 3.8
    # PN > LN: +1 with recomputed, −1.05 ± … with averaged statistics
    assert "contradicted with averaged statistics; supported with recomputed ones (primary)" in text
