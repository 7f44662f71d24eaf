"""Stage `prepare`: check a data set's raw download and write what training reads.

    python -m normrepro.convnext.prepare --dataset fashion-mnist \
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

import argparse
import sys

from normrepro.convnext.data import DATASETS, prepare
from normrepro.errors import cli


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.convnext.prepare",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--raw", required=True, help="data/raw/<dataset> (with MANIFEST.json)")
    parser.add_argument("--out", required=True, help="data/processed/<dataset>")
    args = parser.parse_args(argv)
    info = prepare(args.dataset, args.raw, args.out)
    print(f"[prepare] {args.dataset}: {info['n_train']} training and {info['n_test']} test "
          f"images -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
