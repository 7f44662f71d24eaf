"""Tiny data sets in the layouts the pipelines read: a raw Fashion-MNIST download with its
MANIFEST.json (as `normrepro.fetch` writes it), for tests of prepare and of whole make runs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from normrepro.tasks.image_classification.data import FASHION_FILES
from normrepro.sources.common import write_manifest


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An IDX file, gzipped with a fixed header time (the same bytes every time)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fashion_labels(n: int, shift: int = 0) -> np.ndarray:
    return (np.arange(n) + shift) % 10


def write_fashion_raw(raw: Path, n_train: int = 40, n_test: int = 12, label_shift: int = 0,
                      manifest: bool = True) -> Path:
    """`raw/` with the four Fashion-MNIST files (learnable: a bright row encodes the class) and,
    with `manifest`, the MANIFEST.json of a verified fetch (sizes and sha256 of the files)."""
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lbl_name = FASHION_FILES[split]
        labels = fashion_labels(n, label_shift)
        images = rng.integers(1, 60, (n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y, 3:25] = 250
        write_idx_gz(raw / img_name, images)
        write_idx_gz(raw / lbl_name, labels)
    if manifest:
        write_fashion_manifest(raw)
    return raw


def write_fashion_manifest(raw: Path) -> Path:
    files = [raw / name for pair in FASHION_FILES.values() for name in pair]
    return write_manifest(raw, "fashion-mnist", files, source="tests (synthetic)", license="none")
