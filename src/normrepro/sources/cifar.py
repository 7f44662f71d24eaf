"""CIFAR-10/100: torchvision's URL and archive MD5, then torchvision's own per-file check."""

from __future__ import annotations

from pathlib import Path

from normrepro.download import (
    DataError,
    safe_extract,
)
from normrepro.sources.common import (
    begin_fetch,
    obtain_file,
    write_manifest,
)


def _fetch_cifar(dataset: str, out: Path, url: str | None, source) -> Path:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    out = begin_fetch(Path(out))
    archive = out / cls.filename
    obtain_file(url or cls.url, archive, md5=cls.tgz_md5, source=source)
    extracted = safe_extract(archive, out)
    for train in (True, False):
        try:
            # torchvision re-checks every batch file's MD5 here; this is also the exact call the
            # data module makes later, so success proves the layout it needs.
            cls(root=str(out), train=train, download=False)
        except RuntimeError as exc:
            raise DataError(f"{dataset} in {out} failed torchvision's integrity check ({exc}); "
                            f"delete {out} and fetch again") from exc
    return write_manifest(
        out, dataset, [archive, *extracted],
        source=f"{url or cls.url} (md5 {cls.tgz_md5}, as pinned by torchvision)",
        license="CIFAR (Krizhevsky 2009): free for research; cite the technical report",
    )


def fetch_cifar10(out, *, url: str | None = None, source=None) -> Path:
    """CIFAR-10 in torchvision's layout (`cifar-10-batches-py/`) plus the verified archive."""
    return _fetch_cifar("cifar10", out, url, source)


def fetch_cifar100(out, *, url: str | None = None, source=None) -> Path:
    """CIFAR-100 in torchvision's layout (`cifar-100-python/`) plus the verified archive."""
    return _fetch_cifar("cifar100", out, url, source)
