"""The translation extension folder (replications/dyt_text): configs only, the shared stages.

Every profile x arm resolves; each arm's model holds its norm in every position of encoder and
decoder, the post-LN arms place it after the residual, and only postln_nowarmup drops the
warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from normrepro import plan, sweep
from normrepro.config import ConfigError, _choices, load_profile, resolve
from normrepro.norms import create_norm
from normrepro.tasks.translation import model as tm
from normrepro.tasks.translation.datamodule import load_dictionary

from test_translation import tiny_data  # noqa: F401  (the fixture)

REPL = Path(__file__).resolve().parents[2] / "replications" / "dyt_text"
NORM = {"ln": "layer", "rms": "rms", "dyt": "dyt", "postln": "layer", "postln_nowarmup": "layer"}


def test_folder_has_configs_only():
    assert {p.name for p in REPL.iterdir()} == {"README.md", "base.yaml", "paper.yaml", "arms", "profiles"}
    assert set(_choices(REPL / "arms")) == set(NORM)
    assert yaml.safe_load((REPL / "base.yaml").read_text())["task"] == "translation"


def test_every_arm_swaps_every_norm(tiny_data):  # noqa: F811
    dictionary = load_dictionary(tiny_data)
    warmups = {}
    for profile in _choices(REPL / "profiles"):
        for arm, norm in NORM.items():
            cfg = resolve(REPL, profile, arm, seed=1)
            warmups[arm] = cfg["optim"]["warmup_updates"]
            model = tm.build_model(tm.model_args_from_config(cfg["model"], cfg["optim"]["warmup_updates"]),
                                   dictionary, dictionary)
            norms = tm.norm_modules(model)
            expected = type(create_norm(norm, 8)).__name__
            assert norms and {type(m).__name__ for m in norms.values()} == {expected}, (arm, norms)
            pre = not arm.startswith("postln")
            assert model.encoder.layers[0].normalize_before is pre
            assert model.decoder.layers[0].normalize_before is pre
    assert warmups["postln_nowarmup"] == 0
    assert all(w > 0 for arm, w in warmups.items() if arm != "postln_nowarmup")


# ---------------------------------------------------------------- the translation sweep

def _fake_run(run: Path, nll: list[float], status: str = "ok", updates: int = 100) -> None:
    """A finished translation run folder as the train stage leaves it (config, metrics, done-marker)."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: translation\n")
    n = len(nll)
    pd.DataFrame({"updates": [updates * (i + 1) // n for i in range(n)], "val_loss": [v + 0.3 for v in nll],
                  "val_nll_loss": nll, "val_bleu": [float("nan")] * n,
                  "train_loss": [v + 0.5 for v in nll]}).to_csv(run / "metrics.csv", index=False)
    (run / "train.json").write_text(json.dumps({"status": status, "updates": updates, "wall_time_s": 12.5}))


def test_translation_sweep_chooses_the_lowest_validation_loss(tmp_path):
    sw = tmp_path / "sweep"
    runs = []
    for arm, lr, nll, status in (("ln", 1e-3, [6.0, 5.0], "ok"), ("ln", 2e-3, [6.0, 4.5], "ok"),
                                 ("ln", 4e-3, [6.0, 4.9], "ok"), ("dyt", 1e-3, [6.0, 5.2], "ok"),
                                 ("dyt", 2e-3, [6.0, 3.0], "diverged")):
        _fake_run(sw / arm / f"lr{lr!r}", nll, status)
        runs.append(sw / arm / f"lr{lr!r}")
    _fake_run(sw / "ln" / "check", [6.0, 4.25], updates=150)
    summary = sweep.finish(sw, runs, ["ln", "dyt"])
    grid = pd.read_csv(sw / "grid.csv")
    assert list(grid.columns) == list(sweep.grid_columns(sweep.task_sweep_spec("translation")))
    ln, dyt = summary.set_index("arm").loc["ln"], summary.set_index("arm").loc["dyt"]
    assert ln["chosen_lr"] == 2e-3 and ln["val_nll_loss"] == 4.5 and not ln["chosen_at_edge"]
    assert ln["runner_up_lr"] == 4e-3 and ln["runner_up_val_nll_loss"] == 4.9
    assert ln["check_updates"] == 150 and math.isclose(ln["check_gain"], -0.25)
    # the diverged run's lower loss never wins; the only finished run is on the grid's edge
    assert dyt["chosen_lr"] == 1e-3 and dyt["chosen_at_edge"] and dyt["check_status"] == "missing"
    assert (sw / "figures" / "sweep.png").is_file()


def test_translation_sweep_run_configs(tmp_path):
    grid_cfg = sweep.resolve_grid_run(REPL, "cpu", "dyt", 4e-3)
    base = resolve(REPL, "cpu", "dyt", 1)
    assert grid_cfg["optim"]["lr"] == 4e-3 and grid_cfg["seed"] == 1 and grid_cfg["sweep_role"] == "grid"
    assert grid_cfg["trainer"] == base["trainer"] and grid_cfg["model"] == base["model"]
    pd.DataFrame([{"arm": "dyt", "lr": 1e-3, "chosen": True}]).to_csv(tmp_path / "grid.csv")
    check = sweep.resolve_check_run(REPL, "cpu", "dyt", tmp_path / "grid.csv")
    factor = float(load_profile(REPL, "cpu")["sweep"]["check_epochs_factor"])
    assert check["optim"]["lr"] == 1e-3 and check["sweep_role"] == "check"
    assert check["trainer"]["max_updates"] == math.ceil(base["trainer"]["max_updates"] * factor)
    assert check["optim"]["warmup_updates"] == base["optim"]["warmup_updates"]


def test_replicate_dyt_also_runs_the_text_extension(monkeypatch, tmp_path):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert plan.also_replicate("dyt") == ["dyt_text"]
    assert plan.also_replicate("dyt_text") == [] and plan.also_replicate("convnext") == []
    args = argparse.Namespace(replication="dyt", profile="nonexistent", dataset=None, arms=None,
                              seeds=None, set="", goal="replicate")
    with pytest.raises(ConfigError, match="unknown profile 'nonexistent' for replications/dyt_text"):
        plan.check_also_replicate(args)
    plan.check_also_replicate(argparse.Namespace(**{**vars(args), "arms": "vit_ln"}))  # narrowed: not checked
    fake = tmp_path / "replications"
    (fake / "a").mkdir(parents=True)
    (fake / "a" / "base.yaml").write_text("task: translation\nalso_replicate: [a]\n")
    monkeypatch.setattr(plan, "REPLICATIONS", fake)
    with pytest.raises(ConfigError, match="names 'a', which is not another replication"):
        plan.also_replicate("a")
