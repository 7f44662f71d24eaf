"""Task `translation`: German→English with norm-swapped fairseq transformers (used by the PowerNorm
replication, `replications/powernorm/`).

This task's halves of the stages (`normrepro.stages`; `average`, `recompute_stats`, `crosscheck`
and `bench` are run as `python -m normrepro.tasks.translation.<module>`):

* `prepare`   raw corpus → Moses tokens → joint BPE → fairseq-binarized data (+ raw references)
* `train`     one arm × seed with Lightning around fairseq's model and data pieces
* `average`   the last N weight snapshots of a run → `averaged.pt`
* `recompute_stats`  BN/PN running statistics for the averaged weights → `running_stats.pt`
* `evaluate`  beam search with fairseq's `SequenceGenerator`, tokenized BLEU and sacreBLEU
  (recomputed running statistics primary, averaged ones secondary)
* `report`    `results/<replication>/<profile>/report.md` (summarize and plot are shared stages;
  `SPEC` below says what they read)
* `crosscheck`, `bench`  the same arm trained by `fairseq-train` vs the Lightning module

`model` holds the architecture (also registered for `fairseq-train --user-dir
src/normrepro/tasks/translation/fairseq_plugin`), `datamodule` and `module` the Lightning pieces.
This package's `__init__` imports nothing heavy so that every stage starts quickly.
"""

from __future__ import annotations

import json
from pathlib import Path

from normrepro.tasks import SweepSpec, TaskSpec

def data_dir(cfg: dict) -> Path:
    """The prepared data folder a run config reads: data/processed/<data.dataset>[-<data.variant>]."""
    variant = cfg["data"].get("variant") or ""
    return Path("data/processed") / (cfg["data"]["dataset"] + (f"-{variant}" if variant else ""))


BASE_METRICS = ("test_bleu_tok", "test_bleu_sacre")
AVGSTATS_METRICS = ("test_avgstats_bleu_tok", "test_avgstats_bleu_sacre")


def metric_keys(run_dirs: list[Path]) -> list[str]:
    """Test metrics, `<set>_bleu_*` of every out-of-domain set some run was scored on, then the
    averaged-statistics test metrics if some run has them.

    All but the last two are of the primary evaluation (running statistics recomputed for the
    averaged weights); `test_avgstats_*` score the test set with the averaged running statistics
    (secondary; see `normrepro.tasks.translation.evaluate`)."""
    sets, avgstats = [], False
    for run in run_dirs:
        final = Path(run) / "final.json"
        if final.is_file():
            data = json.loads(final.read_text(encoding="utf-8"))
            for k in data:
                if k in AVGSTATS_METRICS:
                    avgstats = True
                elif k.endswith("_bleu_tok") and k != "test_bleu_tok" and k[: -len("_bleu_tok")] not in sets:
                    sets.append(k[: -len("_bleu_tok")])
    return (list(BASE_METRICS) + [f"{s}_{m}" for s in sorted(sets) for m in ("bleu_tok", "bleu_sacre")]
            + (list(AVGSTATS_METRICS) if avgstats else []))


SPEC = TaskSpec(
    summary_metrics=metric_keys,
    curve_x="updates",
    curve_columns=("val_loss", "val_bleu"),
    curve_labels={"updates": "updates", "val_loss": "validation loss (bits/token, label-smoothed)",
                  "val_bleu": "greedy validation BLEU (subset)", "train_loss": "training loss (bits/token)"},
    figures={"curves": "curves", "final": "final-bleu", "ours-vs-paper": "ours-vs-paper"},
    done_marker="train.json",
    report_extras=("bench", "crosscheck"),
    sweep=SweepSpec(score="val_nll_loss",
                    score_label="validation cross-entropy at the last update (bits/token, no label smoothing)",
                    higher_is_better=False, extra=("val_loss", "val_bleu", "train_loss"),
                    length_key="max_updates", length_name="updates", done_length="updates",
                    done_time="wall_time_s"),
)
