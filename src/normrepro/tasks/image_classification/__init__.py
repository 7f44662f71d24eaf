"""Task `image_classification`: a timm ConvNeXt or ViT with any norm of the registry, trained
with Lightning on an image data set (Fashion-MNIST, CIFAR, Imagenette, ImageNet).

`data`/`datamodule` read the prepared images, `model`/`vit` build the networks, `module` is the
Lightning module; `prepare`, `train`, `evaluate` and `report` are this task's halves of the
stages of the same name (`normrepro.stages`); `sweep` and `bench` are its learning-rate sweep
and speed benchmark. The ConvNeXt and DyT replications (`replications/convnext/`,
`replications/dyt/`) use it.
"""

from pathlib import Path

from normrepro.errors import UserError
from normrepro.tasks import SweepSpec, TaskSpec

METRICS = ("test_top1", "test_top5")  # keys of final.json (normrepro.tasks.image_classification.evaluate)

def data_dir(cfg: dict) -> Path:
    """The processed data folder a run config reads (`prepare` writes it)."""
    return Path(cfg["data"].get("processed_root") or "data/processed") / cfg["data"]["dataset"]


def check_data_arg(cfg: dict, run_dir: Path, data: Path | None) -> None:
    """A stage's `--data`, when given, must be the folder the run config names (the config is
    what training and evaluation read)."""
    expected = data_dir(cfg)
    if data is not None and Path(data).resolve() != expected.resolve():
        raise UserError(f"--data {data} is not the data of {run_dir}/config.yaml ({expected}); "
                        "leave --data out, or change data.dataset / data.processed_root")


SPEC = TaskSpec(
    summary_metrics=lambda run_dirs: list(METRICS),
    curve_x="epoch",
    curve_columns=("train_loss", "val_top1"),
    curve_labels={"epoch": "epoch", "train_loss": "training loss (label-smoothed CE)",
                  "val_top1": "held-out top-1 (%)", "val_loss": "held-out loss"},
    figures={"curves": "learning-curves", "final": "final-top1", "ours-vs-paper": "ours-vs-paper"},
    done_marker="env.json",
    sweep=SweepSpec(score="val_top1", score_label="held-out top-1 (%) after the last epoch",
                    higher_is_better=True, extra=("val_loss", "train_loss"), length_key="max_epochs",
                    length_name="epochs", done_length="epochs_completed", done_time="train_time_s",
                    done_section="train"),
)
