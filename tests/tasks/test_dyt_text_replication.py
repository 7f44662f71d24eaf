"""The translation extension folder (replications/dyt_text): configs only, the shared stages.

Every profile x arm resolves; each arm's model holds its norm in every position of encoder and
decoder, the post-LN arms place it after the residual, and only postln_nowarmup drops the
warm-up.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from normrepro.config import _choices, resolve
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
