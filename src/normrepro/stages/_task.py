"""How a stage finds the task code it runs: from a run folder's config.yaml (`task:`), or from a
replication folder's base.yaml (`normrepro.config.schema_name`).

Every task package (`normrepro.tasks.<task>`) declares `SPEC`, a `normrepro.tasks.TaskSpec`:
what its runs are scored by and how its figures are drawn; the stages do the rest the same way for every task.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from normrepro import schema
from normrepro.config import load_yaml, schema_name
from normrepro.errors import ConfigError, UserError
from normrepro.tasks import TaskSpec


def task_package(task: str) -> ModuleType:
    if task not in schema.TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(schema.TASKS)}")
    return importlib.import_module(f"normrepro.tasks.{task}")


def task_module(task: str, name: str) -> ModuleType:
    """`normrepro.tasks.<task>.<name>`, the task's half of a stage."""
    task_package(task)
    return importlib.import_module(f"normrepro.tasks.{task}.{name}")


def spec(task: str) -> TaskSpec:
    return task_package(task).SPEC


def run_task(run_dir: str | Path) -> str:
    """The task of a run folder: `task` of its config.yaml."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found; a run folder holds its resolved config.yaml "
                        "(make writes it; or python -m normrepro.config resolve ...)")
    task = (load_yaml(path) or {}).get("task")
    if task is None:
        raise ConfigError(f"{path} has no `task`; it was resolved before tasks existed: rerun the "
                          "make target, which rewrites it (nothing is retrained)")
    task_package(task)
    return task


def replication_task(repl_dir: str | Path) -> str:
    """The task of a replication folder (its base.yaml's `task`)."""
    task = schema_name(repl_dir)
    task_package(task)
    return task
