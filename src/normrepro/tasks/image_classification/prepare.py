"""This task's half of the `prepare` stage: check an image data set's raw download and write
what training reads.

    python -m normrepro.stages.prepare --task image_classification fashion-mnist \
        --raw data/raw/fashion-mnist --out data/processed/fashion-mnist

First checks every raw file against `RAW/MANIFEST.json` (size and sha256; a mismatch names the
file and how to fetch it again). Always writes `OUT/prepared.json` (the make target: sizes,
classes, normalisation statistics, where the images are, and the hashes of the files written here,
which training and evaluation check). For fashion-mnist it also writes `OUT/fashion-mnist.pt`: the IDX files
parsed into uint8 tensors, padded to 32×32, loaded later with `torch.load(weights_only=True)`.
Image-folder data sets (cifar, imagenette, imagenet) are read in place; this stage only checks
that torchvision can open them, with a message naming the expected layout when it cannot.
"""

from __future__ import annotations

from pathlib import Path

from normrepro.errors import UserError
from normrepro.tasks.image_classification.data import DATASETS, prepare


def run_stage(dataset: str, raw: Path, out: Path, options: dict | None = None,
              codes_from: Path | None = None) -> int:
    """The `prepare` stage for one image data set (no options: everything is in the run config)."""
    if dataset not in DATASETS:
        raise UserError(f"unknown image data set {dataset!r}; choose from {', '.join(sorted(DATASETS))}")
    if options or codes_from is not None:
        raise UserError("image data sets take no --options or --codes-from; leave them out")
    info = prepare(dataset, raw, out)
    print(f"[prepare] {dataset}: {info['n_train']} training and {info['n_test']} test "
          f"images -> {out}", flush=True)
    return 0
