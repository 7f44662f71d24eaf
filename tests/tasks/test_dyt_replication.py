"""The DyT replication folder (replications/dyt): configs only, run by the shared stages.

Every profile x arm resolves against the image task's schema and builds the model its arm names,
with the norm it names everywhere the architecture has one; the README quotes paper.yaml.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from normrepro.config import resolve
from normrepro.paper import load_paper
from normrepro.tasks.image_classification import data as cxdata
from normrepro.tasks.image_classification.model import build_model, norm_modules
from normrepro.tasks.image_classification.run_config import check_config

REPL = Path(__file__).resolve().parents[2] / "replications" / "dyt"
PROFILES = sorted(p.stem for p in (REPL / "profiles").glob("*.yaml"))
ARMS = sorted(p.stem for p in (REPL / "arms").glob("*.yaml"))
# The norm module class each arm's model holds (and no other), by arm (a ViT's registry norm
# sits inside timm's blocks through TokensAsSequence).
EXPECTED = {"convnext_ln": "LayerNorm2d", "convnext_dyt": "DyT2d", "convnext_bn": "BatchNorm2d",
            "vit_ln": "SeqLayerNorm", "vit_dyt": "DyT", "vit_bn": "MaskedBatchNorm"}


def test_folder_has_configs_only():
    names = {p.name for p in REPL.iterdir()}
    assert names == {"README.md", "base.yaml", "paper.yaml", "arms", "profiles"}
    assert set(ARMS) == set(EXPECTED)
    base = yaml.safe_load((REPL / "base.yaml").read_text())
    assert base["task"] == "image_classification"


@pytest.mark.parametrize("arm", ARMS)
def test_smoke_config_builds_the_armed_model(arm):
    cfg = check_config(resolve(REPL, "smoke", arm, 0))
    spec = cxdata.dataset_spec(cfg["data"]["dataset"])
    model = build_model(cfg["model"], spec.num_classes, spec.in_chans, image_size=spec.image_size)
    assert set(norm_modules(model)) == {EXPECTED[arm]}, norm_modules(model)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("arm", ARMS)
def test_every_config_resolves(profile, arm):
    cfg = check_config(resolve(REPL, profile, arm, 0))
    family = arm.split("_")[0]
    assert cfg["model"]["variant"].startswith(family)
    if profile == "paper":
        assert cfg["model"]["variant"] in ("convnext_base", "vit_base")
        assert cfg["data"]["batch_size"] * cfg["trainer"]["devices"] * cfg["trainer"]["num_nodes"] == 4096


def test_readme_quotes_the_numbers_of_paper_yaml():
    paper = load_paper(REPL / "paper.yaml")
    readme = (REPL / "README.md").read_text()
    for regime, (vit, convnext) in {"base": ("ViT-B", "ConvNeXt-B"), "large": ("ViT-L", "ConvNeXt-L")}.items():
        arms = paper.data["results"][regime]["arms"]
        assert f"{vit} {arms['vit_ln']['mean']} → {arms['vit_dyt']['mean']}" in readme
        assert f"{convnext} {arms['convnext_ln']['mean']} → {arms['convnext_dyt']['mean']}" in readme


def test_the_report_names_runs_that_collapsed_to_chance_level():
    """A run that trained to the end without a NaN but scores at chance is named, with why its
    arm's interval is wide (not "more seeds")."""
    import pandas as pd

    from normrepro.tasks.image_classification import report

    runs = pd.DataFrame([{"arm": "vit_dyt", "seed": 2, "status": "ok", "test_top1": 10.0},
                         {"arm": "vit_dyt", "seed": 0, "status": "ok", "test_top1": 75.4},
                         {"arm": "vit_ln", "seed": 1, "status": "diverged", "test_top1": float("nan")},
                         {"arm": "vit_ln", "seed": 0, "status": "ok", "test_top1": 19.99}])
    assert report.at_chance_runs(runs, 10) == ["vit_dyt seed 2 (10.00 %)", "vit_ln seed 0 (19.99 %)"]
    assert report.at_chance_runs(runs, 100) == []
    text = report._at_chance_text(report.at_chance_runs(runs, 10), 10)
    assert "below twice chance, 20 % for 10 classes" in text and "not counted as diverged" in text
    assert report._at_chance_text([], 10) == ""
