"""The stage layer's dispatch: one CLI per stage for every replication, the task read from a run's
config.yaml or a replication's base.yaml, and one-line errors when either cannot say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from normrepro import schema
from normrepro.config import resolve, schema_name
from normrepro.errors import ConfigError, UserError
from normrepro.stages import _task
from normrepro.stages import evaluate as st_evaluate
from normrepro.stages import report as st_report
from normrepro.stages import train as st_train

ROOT = Path(__file__).resolve().parents[2]
REPLS = ROOT / "replications"


def test_every_replication_names_a_task_and_every_task_declares_a_spec():
    for base in sorted(REPLS.glob("*/base.yaml")):
        kind = schema_name(base.parent)
        if kind == "insights":
            continue
        assert kind in schema.TASKS, base
        spec = _task.spec(kind)
        assert spec.figures.keys() == {"curves", "final", "ours-vs-paper"}
    assert {schema_name(REPLS / "convnext"), schema_name(REPLS / "powernorm")} == set(schema.TASKS)


def test_a_resolved_run_config_carries_its_task_and_the_task_is_not_part_of_the_stamp():
    assert resolve(REPLS / "convnext", "smoke", "ln", 0)["task"] == "image_classification"
    assert resolve(REPLS / "powernorm", "smoke", "ln", 1)["task"] == "translation"
    for task in schema.TASKS:  # an old run folder without `task` is not retrained for it
        assert "task" in schema.NOT_TRAINING[task]


def test_a_replication_without_a_task_fails_in_one_line(tmp_path):
    repl = tmp_path / "newpaper"
    repl.mkdir()
    (repl / "base.yaml").write_text("arms: [ln]\n")
    with pytest.raises(ConfigError, match=r"base.yaml: no `task:`; name the task"):
        schema_name(repl)
    (repl / "base.yaml").write_text("task: speech\n")
    with pytest.raises(ConfigError, match=r"task 'speech' is not a task; choose from image_classification"):
        schema_name(repl)


def test_train_and_evaluate_say_what_is_missing_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert st_train.main([str(run)]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
    (run / "config.yaml").write_text(yaml.safe_dump({"arm": "ln", "seed": 0}))
    assert st_evaluate.main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no `task`" in err[0] and "rerun the make target" in err[0]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_image_classification_rejects_options_it_does_not_have(tmp_path, capsys):
    cfg = resolve(REPLS / "convnext", "smoke", "ln", 0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert st_evaluate.main([str(run), "--ood", str(tmp_path)]) == 2
    assert "no out-of-domain test sets" in capsys.readouterr().err
    assert st_train.main([str(run), "--data", str(tmp_path / "elsewhere")]) == 2
    assert "is not the data of" in capsys.readouterr().err
    with pytest.raises(UserError, match="reads no --crosscheck"):
        st_report.report(REPLS / "convnext", tmp_path, crosscheck=tmp_path / "c.json")


def test_plan_names_the_closest_replication(capsys, monkeypatch):
    from normrepro import plan

    monkeypatch.chdir(ROOT)  # the plan reads replications/ from the repository root
    assert plan.main(["convnxt", "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no replication 'convnxt' under replications; did you mean 'convnext'? "
                   "choose from convnext, dyt, dyt_text, insights, powernorm"]
