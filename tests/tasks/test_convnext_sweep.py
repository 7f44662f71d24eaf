"""The ConvNeXt replication's fairness machinery: per-arm lr sweep, paired statistics, the
paper's augmentation through timm, and the exact fast conv kernels.

CPU-only and tiny: hand-made run folders for the sweep, width-8 ConvNeXts for the kernels.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from normrepro import stats
from normrepro.config import ConfigError, load_profile, resolve
from normrepro.tasks.image_classification import report as cxreport
from normrepro import sweep
from normrepro.tasks.image_classification.data import build_image_transform
from normrepro.tasks.image_classification.metrics import write_metrics_csv
from normrepro.tasks.image_classification.model import (TOEPLITZ_MAX_PIXELS, PatchConv2d, PointwiseConv2d,
                                      SmallMapDepthwiseConv2d, build_model, use_fast_convs)
from normrepro.tasks.image_classification.module import ConvNeXtClassifier, memory_format, scaled_lr
from normrepro.provenance import write_env_json
from normrepro.summary import collect_runs, summarize_runs

REPL = Path(__file__).resolve().parents[2] / "replications" / "convnext"
TINY = {"depths": [1, 1, 2, 1], "dims": [8, 8, 16, 16]}


# ---------------------------------------------------------------- exact fast conv kernels

def _plain_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, (SmallMapDepthwiseConv2d, PointwiseConv2d, PatchConv2d)):
            m.__class__ = nn.Conv2d
    return ref


def _assert_same_function(conv: nn.Module, fast: nn.Module, x: torch.Tensor, x2: torch.Tensor):
    """`fast` on x2 equals `conv` on x (equal leaf tensors): output and every gradient, float64."""
    y, y2 = conv(x), fast(x2)
    assert y2.shape == y.shape
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(y2, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(x2.grad, x.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.bias.grad, conv.bias.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
def test_small_map_depthwise_conv_is_the_same_function(size):
    # maps 1x2, 2x3, 3x4 run as a matrix product (<= TOEPLITZ_MAX_PIXELS), 4x5 and up as a conv
    assert (size * (size + 1) <= TOEPLITZ_MAX_PIXELS) == (size <= 3)
    torch.manual_seed(size)
    conv = nn.Conv2d(6, 6, 7, padding=3, groups=6).double()
    fast = copy.deepcopy(conv)
    assert SmallMapDepthwiseConv2d.applies_to(fast)
    fast.__class__ = SmallMapDepthwiseConv2d
    x = torch.randn(3, 6, size, size + 1, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    _assert_same_function(conv, fast, x, x2)
    if size <= 2:  # taps out of reach of every pixel get exactly zero gradient
        rh, rw = 2 * size - 1, 2 * (size + 1) - 1
        top, left = (7 - rh) // 2, (7 - rw) // 2
        outside = torch.ones(7, 7, dtype=torch.bool)
        outside[top:top + rh, left:left + rw] = False
        assert torch.all(fast.weight.grad[:, :, outside] == 0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 8, 8, 2), (2, 5, 12, 8, 4), (2, 3, 6, 5, 2)])
def test_patch_conv_is_the_same_function(shape, channels_last):
    B, cin, H, W, k = shape
    torch.manual_seed(H)
    conv = nn.Conv2d(cin, 7, k, stride=k).double()
    fast = copy.deepcopy(conv)
    assert PatchConv2d.applies_to(fast)
    fast.__class__ = PatchConv2d
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(B, cin, H, W, dtype=torch.float64).contiguous(memory_format=fmt)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    # (6 x 5 with k = 2: the conv drops the last column; so does fast)
    _assert_same_function(conv, fast, x1, x2)


def test_fast_convs_only_where_exact():
    assert not SmallMapDepthwiseConv2d.applies_to(nn.Conv2d(4, 4, 7, padding=3, groups=4, stride=2))
    assert not SmallMapDepthwiseConv2d.applies_to(nn.Conv2d(4, 4, 7, padding=2, groups=4))
    assert not SmallMapDepthwiseConv2d.applies_to(nn.Conv2d(4, 8, 3, padding=1))
    assert not PointwiseConv2d.applies_to(nn.Conv2d(4, 8, 1, stride=2))
    assert not PointwiseConv2d.applies_to(nn.Conv2d(4, 8, 1, groups=2))
    assert PointwiseConv2d.applies_to(nn.Conv2d(4, 8, 1))
    assert not PatchConv2d.applies_to(nn.Conv2d(4, 8, 2, stride=1))
    assert not PatchConv2d.applies_to(nn.Conv2d(4, 8, 2, stride=2, padding=1))
    assert not PatchConv2d.applies_to(nn.Conv2d(4, 8, 2, stride=2, groups=2))
    assert not PatchConv2d.applies_to(nn.Conv2d(4, 8, 1, stride=1))
    assert PatchConv2d.applies_to(nn.Conv2d(4, 8, 4, stride=4))


@pytest.mark.parametrize("norm", ["layer2d", "batch2d"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_convnext_with_fast_convs_equals_plain_convs(norm, channels_last):
    torch.manual_seed(0)
    model = build_model({"variant": "convnext_atto", "norm": norm, "patch_size": 4,
                         "drop_path_rate": 0.0, "kwargs": TINY}, 10, 1).double()
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("SmallMapDepthwiseConv2d") == sum(TINY["depths"])
    assert kinds.count("PointwiseConv2d") == 2 * sum(TINY["depths"])
    assert kinds.count("PatchConv2d") == 4  # the stem and three downsampling convs
    ref = _plain_copy(model)
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    y, y_ref = model(x.contiguous(memory_format=fmt)), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0, atol=1e-9, msg=name)
    assert use_fast_convs(ref) == {"depthwise": sum(TINY["depths"]),
                                   "pointwise": 2 * sum(TINY["depths"]), "patch": 4}


def test_memory_format_auto_and_explicit():
    cfg = resolve(REPL, "cpu", "bn", 0)
    cfg["trainer"]["accelerator"] = "cpu"
    assert memory_format(cfg) == torch.channels_last
    cfg["model"]["channels_last"] = False
    assert memory_format(cfg) == torch.contiguous_format


# ---------------------------------------------------------------- learning rates

def test_absolute_lr_overrides_the_scaling_rule():
    cfg = resolve(REPL, "gpu", "ln", 0)
    assert cfg["optim"]["lr"] is None  # gpu/paper: Goyal et al.'s rule from the paper's 4e-3
    assert scaled_lr(cfg, 1) == pytest.approx(4e-3 * 512 / 4096)
    paper = resolve(REPL, "paper", "ln", 0)
    assert scaled_lr(paper, 32) == pytest.approx(4e-3)  # 128 x 32 GPUs = 4096: the paper's lr
    cfg["optim"]["lr"] = 1.5e-3
    assert scaled_lr(cfg, 8) == 1.5e-3


def test_cpu_profile_uses_a_swept_lr_per_arm():
    """The default runs each arm at a value of its sweep grid (chosen by make sweep-convnext)."""
    profile = load_profile(REPL, "cpu")
    grids = sweep.sweep_settings(profile)["lrs"]
    for arm in profile["arms"]:
        grid = grids[arm]
        assert len(grid) >= 4 and all(b / a == pytest.approx(2.0) for a, b in zip(grid, grid[1:]))
        lr = resolve(REPL, "cpu", arm, 0)["optim"]["lr"]
        assert lr is not None and any(math.isclose(float(lr), g) for g in grid), arm


# ---------------------------------------------------------------- the sweep

def _grid_run(root: Path, arm: str, lr: float, val: list[float], status: str = "ok",
              test_top1: float | None = None) -> Path:
    run = root / arm / f"lr{lr!r}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: image_classification\n")  # (the task scores the run)
    write_metrics_csv(run / "metrics.csv", [
        {"epoch": e + 1, "step": 10 * (e + 1), "train_loss": 1.0, "val_loss": 0.5,
         "val_top1": v, "val_top5": 99.0, "lr": lr, "epoch_time_s": 1.0, "train_time_s": 1.0,
         "train_images_per_s": 100.0} for e, v in enumerate(val)])
    write_env_json(run / "env.json", wall_time_s=1.0,
                   train={"status": status, "epochs_completed": len(val), "train_time_s": 5.0})
    if test_top1 is not None:  # a test score the sweep must never look at
        (run / "final.json").write_text(json.dumps({"status": "ok", "test_top1": test_top1}))
    return run


def test_grid_chooses_on_the_last_held_out_epoch_never_on_test(tmp_path):
    runs = [
        _grid_run(tmp_path, "bn", 5e-4, [70.0, 80.0], test_top1=99.0),
        _grid_run(tmp_path, "bn", 1e-3, [75.0, 84.0], test_top1=10.0),
        _grid_run(tmp_path, "bn", 2e-3, [90.0, 83.0]),  # best epoch is not the last: not chosen
        _grid_run(tmp_path, "ln", 1e-3, [70.0, 85.0]),
        _grid_run(tmp_path, "ln", 2e-3, [70.0, float("nan")], status="diverged"),
    ]
    grid = sweep.grid_table(tmp_path, runs)
    chosen = grid[grid["chosen"]].set_index("arm")["lr"].to_dict()
    assert chosen == {"bn": 1e-3, "ln": 1e-3}
    diverged = grid[(grid["arm"] == "ln") & (grid["lr"] == 2e-3)].iloc[0]
    assert diverged["status"] == "diverged" and math.isnan(diverged["val_top1"])
    summary = sweep.finish(tmp_path, runs, ["bn", "ln"])
    assert (tmp_path / "grid.csv").is_file() and (tmp_path / "figures" / "sweep.png").is_file()
    row = summary.set_index("arm").loc["bn"]
    assert row["chosen_lr"] == 1e-3 and row["runner_up_lr"] == 2e-3
    assert row["check_status"] == "missing" and math.isnan(row["check_gain"])
    assert sweep.chosen_lr(tmp_path / "grid.csv", "ln") == 1e-3


def test_check_run_gain_is_measured_against_the_chosen_grid_run(tmp_path):
    runs = [_grid_run(tmp_path, "ln", 1e-3, [80.0, 88.0]), _grid_run(tmp_path, "ln", 2e-3, [80.0, 87.0])]
    check = tmp_path / "ln" / "check"
    check.mkdir()
    (check / "config.yaml").write_text("task: image_classification\n")
    write_metrics_csv(check / "metrics.csv", [
        {"epoch": e, "step": e, "train_loss": 1.0, "val_loss": 0.5, "val_top1": v,
         "val_top5": 99.0, "lr": 1e-3, "epoch_time_s": 1.0, "train_time_s": 1.0,
         "train_images_per_s": 100.0} for e, v in enumerate([80.0, 86.0, 88.3], 1)])
    write_env_json(check / "env.json", wall_time_s=1.0,
                   train={"status": "ok", "epochs_completed": 3, "train_time_s": 7.0})
    row = sweep.finish(tmp_path, runs, ["ln"]).iloc[0]
    assert row["check_epochs"] == 3 and row["check_gain"] == pytest.approx(0.3)


def test_sweep_run_configs(tmp_path):
    grid_cfg = sweep.resolve_grid_run(REPL, "cpu", "bn", 2e-3)
    base = resolve(REPL, "cpu", "bn", 0)
    assert grid_cfg["optim"]["lr"] == 2e-3 and grid_cfg["seed"] == 0
    assert grid_cfg["trainer"] == base["trainer"] and grid_cfg["data"] == base["data"]
    pd.DataFrame([{"arm": "bn", "lr": 1e-3, "chosen": True},
                  {"arm": "bn", "lr": 2e-3, "chosen": False}]).to_csv(tmp_path / "grid.csv")
    check = sweep.resolve_check_run(REPL, "cpu", "bn", tmp_path / "grid.csv")
    factor = float(load_profile(REPL, "cpu")["sweep"]["check_epochs_factor"])
    assert check["optim"]["lr"] == 1e-3
    assert check["trainer"]["max_epochs"] == math.ceil(base["trainer"]["max_epochs"] * factor)
    assert sweep.check_epochs(7, 1.5) == 11 and sweep.check_epochs(5, 1.5) == 8
    assert sweep.check_epochs(6, 1.5) == 9
    with pytest.raises(ConfigError, match="no finished grid run"):
        sweep.resolve_check_run(REPL, "cpu", "ln", tmp_path / "grid.csv")
    with pytest.raises(ConfigError, match="sweep.lrs"):
        sweep.sweep_settings({"profile": "x", "sweep": {"lrs": [1e-3]}})
    per_arm = {"profile": "x", "arms": ["bn", "ln"],
               "sweep": {"lrs": {"bn": [1e-2, 2e-2], "ln": [1e-3, 2e-3]}}}
    assert sweep.sweep_settings(per_arm)["lrs"] == {"bn": [1e-2, 2e-2], "ln": [1e-3, 2e-3]}
    del per_arm["sweep"]["lrs"]["ln"]
    with pytest.raises(ConfigError, match="no grid for arm.*ln"):
        sweep.sweep_settings(per_arm)
    per_arm["sweep"]["lrs"]["ln"] = [1e-3]
    with pytest.raises(ConfigError, match="sweep.lrs.ln"):
        sweep.sweep_settings(per_arm)
    flat = sweep.sweep_settings({"profile": "x", "arms": ["bn", "ln"], "sweep": {"lrs": [1, 2]}})
    assert flat["lrs"] == {"bn": [1.0, 2.0], "ln": [1.0, 2.0]}
    with pytest.raises(ConfigError, match="no `sweep.lrs`"):
        sweep.sweep_settings({"profile": "smoke"})


# ---------------------------------------------------------------- paired statistics, verdict

def test_paired_interval_is_the_t_interval_of_per_seed_differences():
    a = {0: 90.0, 1: 91.0, 2: 89.5, 3: 90.2}
    b = {0: 90.4, 1: 91.3, 2: 89.8, 3: float("nan"), 5: 92.0}
    got = stats.paired_diff_ci(a, b)
    d = np.array([0.4, 0.3, 0.3])
    ref = stats.summarize(d)
    assert got["n"] == 3 and got["seeds"] == [0, 1, 2]
    assert got["diff"] == pytest.approx(d.mean())
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))
    assert math.isnan(stats.paired_diff_ci({0: 1.0}, {0: 2.0})["ci_half"])


def test_summary_diff_rows_are_paired_with_welch_as_secondary(tmp_path):
    bn, ln = [90.0, 91.0, 89.0], [90.6, 91.5, 89.7]  # a shared seed effect, a steady +0.6
    runs = []
    for arm, values in (("bn", bn), ("ln", ln)):
        for seed, v in enumerate(values):
            run = tmp_path / arm / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "final.json").write_text(json.dumps({"status": "ok", "test_top1": v}))
            runs.append(run)
    table = summarize_runs(collect_runs(tmp_path, ["test_top1"], runs), ["test_top1"],
                           pairs=[("bn", "ln")]).set_index("name")
    d = table.loc["ln - bn"]
    paired = stats.paired_diff_ci(dict(enumerate(bn)), dict(enumerate(ln)))
    welch = stats.diff_ci(bn, ln)
    assert d["ci_half"] == pytest.approx(paired["ci_half"])
    assert d["welch_ci_half"] == pytest.approx(welch["ci_half"])
    assert d["ci_low"] > 0 > d["welch_ci_low"]  # pairing removes the shared seed effect
    assert d["divergence_rate"] == 0.0


# The verdict rule's cases (one rule for every replication) are in test_paper.py.


# ---------------------------------------------------------------- the paper's augmentation

def _names(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


@pytest.mark.parametrize("profile", ["gpu", "paper"])
def test_gpu_and_paper_transforms_carry_the_recipe(profile):
    setup = yaml.safe_load((REPL / "paper.yaml").read_text())["setup"]
    cfg = resolve(REPL, profile, "ln", 0)
    aug = cfg["data"]["augment"]
    size = 32 if profile == "gpu" else 224
    train = build_image_transform(aug, size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True)
    names = _names(train)
    ra = train.transforms[names.index("RandAugment")]
    assert ra.num_layers == 2 and {op.magnitude for op in ra.ops} == {9}
    assert {op.magnitude_std for op in ra.ops} == {0.5}
    assert setup["data.augment.rand_augment"] == "rand-m9-mstd0.5-inc1"
    assert "PosterizeIncreasing" in {op.name for op in ra.ops}  # the "inc1" variant
    erasing = train.transforms[names.index("RandomErasing")]
    assert erasing.probability == setup["data.augment.random_erasing"] == 0.25
    assert erasing.mode == "pixel" and erasing.max_count == 1
    assert train.transforms[names.index("RandomHorizontalFlip")].p == 0.5
    if profile == "paper":
        rrc = train.transforms[0]
        assert type(rrc).__name__ == "RandomResizedCropAndInterpolation"
        assert rrc.scale == (0.08, 1.0) and "bicubic" in str(rrc.interpolation).lower()
        evaluate = build_image_transform(aug, size, (0.5,) * 3, (0.25,) * 3, False)
        assert evaluate.transforms[0].size == 256 and evaluate.transforms[1].size == (224, 224)
    else:
        crop = train.transforms[names.index("RandomCrop")]
        assert crop.padding == 4 and "RandomResizedCropAndInterpolation" not in names
    module = ConvNeXtClassifier(cfg, 10, 3, [0.5] * 3, [0.25] * 3, "image")
    assert module.mixup.mixup_alpha == setup["data.augment.mixup"] == 0.8
    assert module.mixup.cutmix_alpha == setup["data.augment.cutmix"] == 1.0
    assert module.mixup.label_smoothing == setup["optim.label_smoothing"] == 0.1
    assert module.mixup.mode == "batch" and module.mixup.switch_prob == 0.5


def test_verdict_warns_when_the_sweep_says_training_was_still_climbing(tmp_path):
    path = tmp_path / "summary.csv"
    pd.DataFrame([{"arm": "bn", "check_gain": 2.06, "check_epochs": 6},
                  {"arm": "ln", "check_gain": 0.2, "check_epochs": 6}]).to_csv(path, index=False)
    text = cxreport._still_climbing(path)
    assert "still improving" in text and "bn +2.06" in text and "6 epochs" in text
    assert text.startswith("bn was still improving")  # only the arm that gained >= 0.5
    pd.DataFrame([{"arm": "bn", "check_gain": 0.6, "check_epochs": 6},
                  {"arm": "ln", "check_gain": 1.0, "check_epochs": 6}]).to_csv(path, index=False)
    assert cxreport._still_climbing(path).startswith("both arms were still improving")
    pd.DataFrame([{"arm": "bn", "check_gain": 0.3, "check_epochs": 6}]).to_csv(path, index=False)
    assert cxreport._still_climbing(path) == ""
    assert cxreport._still_climbing(tmp_path / "missing.csv") == ""


def test_cpu_profile_runs_two_one_thread_trainings_at_a_time(monkeypatch):
    """`parallel_runs` becomes make's -j for the replicate and the sweep; `trainer.threads` is
    part of every run config (and of its stamp: the numbers depend on the thread count)."""
    import argparse

    from normrepro import plan, schema

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    for goal in ("replicate", "sweep"):
        args = argparse.Namespace(replication="convnext", profile="cpu", dataset=None, arms=None, seeds=None, goal=goal)
        p = plan.plan_image_classification(args, [])
        assert p.jobs == 2, goal
    args = argparse.Namespace(replication="convnext", profile="smoke", dataset=None, arms=None, seeds=None,
                              goal="replicate")
    assert plan.plan_image_classification(args, []).jobs == 1
    args = argparse.Namespace(replication="convnext", profile="cpu", dataset=None, arms=None, seeds=None,
                              goal="replicate")
    cfgs = [cfg for _, cfg, _ in plan.plan_image_classification(args, []).runs]
    assert cfgs and all(cfg["trainer"]["threads"] == 1 for cfg in cfgs)
    assert "trainer.threads" not in schema.NOT_TRAINING["image_classification"]
    assert "parallel_runs" in schema.NOT_TRAINING["image_classification"]


def test_a_tie_goes_to_the_smaller_lr_and_an_edge_choice_is_flagged(tmp_path):
    """grid.csv and summary.csv agree on a tie (the smaller lr), and a best lr at the grid's end
    is marked: the optimum may lie outside the grid."""
    runs = [_grid_run(tmp_path, "ln", lr, [80.0, v])
            for lr, v in ((4e-3, 89.18), (1e-3, 89.16), (2e-3, 89.18), (8e-3, 88.42))]
    runs += [_grid_run(tmp_path, "bn", lr, [80.0, v])
             for lr, v in ((1e-3, 88.62), (2e-3, 88.90), (4e-3, 89.30), (8e-3, 89.54))]
    summary = sweep.finish(tmp_path, runs, ["bn", "ln"]).set_index("arm")
    grid = pd.read_csv(tmp_path / "grid.csv")
    assert sweep.chosen_lr(tmp_path / "grid.csv", "ln") == 2e-3
    assert grid["chosen"].sum() == 2
    ln, bn = summary.loc["ln"], summary.loc["bn"]
    assert ln["chosen_lr"] == 2e-3 and ln["runner_up_lr"] == 4e-3 and not ln["chosen_at_edge"]
    assert bn["chosen_lr"] == 8e-3 and bn["runner_up_lr"] == 4e-3 and bn["chosen_at_edge"]


def test_the_report_says_when_the_chosen_lr_is_on_the_grid_edge(tmp_path):
    from normrepro.tasks.image_classification import report

    runs = [_grid_run(tmp_path, "bn", lr, [80.0, v]) for lr, v in ((1e-3, 88.0), (2e-3, 89.0))]
    runs += [_grid_run(tmp_path, "ln", lr, [80.0, v]) for lr, v in ((1e-3, 88.0), (2e-3, 87.0),
                                                                     (4e-3, 86.0))]
    (runs[1] / "config.yaml").write_text("task: image_classification\ndata: {val_size: 5000}\n", encoding="utf-8")
    sweep.finish(tmp_path, runs, ["bn", "ln"])
    text = "\n".join(report.sweep_section(tmp_path, tmp_path / "report.md", {}))
    assert "bn: the chosen lr 0.002 is the grid's largest" in text
    assert "scored -1.00 points against it" in text
    assert "(one standard error of that held-out accuracy: 0.44 points)" in text  # sqrt(.89*.11/5000)
    assert "ln: the chosen lr 0.001 is the grid's smallest" in text


def test_the_sweep_table_has_every_arms_lrs_when_the_grids_differ(tmp_path):
    from normrepro.tasks.image_classification import report

    runs = [_grid_run(tmp_path, "bn", lr, [80.0, v]) for lr, v in ((4e-3, 90.0), (8e-3, 89.0))]
    runs += [_grid_run(tmp_path, "ln", lr, [80.0, v]) for lr, v in ((1e-3, 88.0), (2e-3, 89.5))]
    sweep.finish(tmp_path, runs, ["bn", "ln"])
    text = "\n".join(report.sweep_section(tmp_path, tmp_path / "report.md", {}))
    text = text.split("Does training longer")[0]  # the grid table only, not the check's
    header = next(line for line in text.splitlines() if line.startswith("| arm"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "arm", "lr 0.001", "lr 0.002", "lr 0.004", "lr 0.008"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in text.splitlines() if line.startswith("| bn") or line.startswith("| ln")}
    assert rows["bn"] == ["–", "–", "**90.00**", "89.00"]
    assert rows["ln"] == ["88.00", "**89.50**", "–", "–"]
