"""Tasks: what is trained and how, independent of any paper.

`image_classification` (ConvNeXt and ViT on image folders/arrays) and `translation` (a fairseq
Transformer trained with Lightning). Each holds its model, Lightning module, data module and the
task-specific halves of the stages (`normrepro.stages` dispatches on a run config's task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class SweepSpec:
    """How a task's sweep scores a run and lengthens its check (`TaskSpec.sweep`).

    score: the metrics.csv column that decides (held-out data only); score_label its meaning.
    higher_is_better: direction of the score.
    extra: more metrics.csv columns recorded next to it in grid.csv.
    length_key: the `trainer.<key>` the check multiplies; length_name its grid/summary column.
    done_length: key of the done-marker's training record holding the completed length.
    done_time: key of the done-marker's training record holding the training wall time (s).
    done_section: the done-marker's section holding that record ("" = top level).
    """
    score: str
    score_label: str
    higher_is_better: bool
    extra: tuple[str, ...]
    length_key: str
    length_name: str
    done_length: str
    done_time: str
    done_section: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """What differs between tasks in the shared stages.

    summary_metrics: run folders -> the final.json keys summarized (the paper's metric first).
    curve_x, curve_columns, curve_labels: the learning-curve figure (metrics.csv columns; a
        column no run has a finite value of is left out).
    figures: figure stems per kind, `curves`, `final`, `ours-vs-paper` (prefixed with the data
        folder's name).
    report_extras: optional inputs the task's report reads (e.g. `bench`, `crosscheck`).
    done_marker: the file a finished training writes last in its run folder (the make target of
        the train stage, mk/tasks/<task>.mk).
    sweep: how `make sweep-<name>` scores a run on held-out data and lengthens its check
        (SweepSpec, normrepro.sweep); None: the task has no sweep.
    """
    summary_metrics: Callable[[list[Path]], list[str]]
    curve_x: str
    curve_columns: tuple[str, ...]
    curve_labels: dict[str, str]
    figures: dict[str, str]
    done_marker: str
    report_extras: tuple[str, ...] = field(default_factory=tuple)
    sweep: SweepSpec | None = None


def figure_paths(task_spec: TaskSpec, out_dir: str | Path, data_name: str) -> dict[str, Path]:
    """Stems (add .png / .pdf) of the figures of one data folder, by kind (the plot stage writes
    them; the reports and the make rules name them)."""
    return {kind: Path(out_dir) / f"{data_name}-{stem}" for kind, stem in task_spec.figures.items()}
