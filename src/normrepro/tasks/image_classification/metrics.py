"""The per-epoch `metrics.csv` of a run: its columns and its (atomic) writer.

Kept free of Lightning and timm so that the report stage can import it cheaply.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from normrepro.io import atomic_write_text

METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "lr",
                  "epoch_time_s", "train_time_s", "train_images_per_s")


def write_metrics_csv(path: str | Path, rows: list[dict]) -> None:
    """Rewrite the whole per-epoch CSV atomically (it is small; one row per epoch)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
