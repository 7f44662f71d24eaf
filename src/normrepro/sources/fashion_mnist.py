"""Fashion-MNIST: the Debian package `dataset-fashion-mnist` (installed with apt-get when missing
and allowed), else the official host; the official MD5s are checked in both cases."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from normrepro.download import (
    ChecksumError,
    DataError,
)
from normrepro.io import atomic_path
from normrepro.sources.common import (
    begin_fetch,
    debian_files_or_install,
    log,
    obtain_file,
    debian_package_version,
    write_manifest,
)


FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5s from the "Get the Data" table of the README of github.com/zalandoresearch/fashion-mnist.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Debian's package carries the official deflate streams, but its build (dh_strip_nondeterminism)
# rewrote each gzip header: the stored file name is dropped and the timestamp set to the package
# date, so the packaged files cannot match the official MD5s as they are. Putting back the name
# and the original timestamp rebuilds the official files byte for byte; the timestamps below are
# the ones for which the rebuilt files match the official MD5s (all four: 2017-08-31 10:50 UTC).
# A wrong value cannot pass silently: the MD5 is checked after the rebuild.
FASHION_MNIST_GZIP_MTIME = {
    "train-images-idx3-ubyte.gz": 1504176606,
    "train-labels-idx1-ubyte.gz": 1504176606,
    "t10k-images-idx3-ubyte.gz": 1504176627,
    "t10k-labels-idx1-ubyte.gz": 1504176627,
}
FASHION_MNIST_DEB = "dataset-fashion-mnist"


def restore_gzip_name_and_mtime(data: bytes, name: str, mtime: int) -> bytes:
    """Rebuild a gzip file whose header was normalised (stored name dropped, timestamp reset).

    A gzip header is: magic 1f 8b, method 08, flags, 4-byte little-endian mtime, extra flags, OS,
    then (flag FNAME) the NUL-terminated original name. Only the header changes; the compressed
    stream and its CRC trailer are kept, so the result is the original file if `name` and `mtime`
    are the original ones.
    """
    if data[:3] != b"\x1f\x8b\x08":
        raise DataError(f"{name}: not a gzip (deflate) file")
    flags = data[3]
    if flags != 0:
        raise DataError(f"{name}: gzip header has flags {flags:#x}; expected a normalised header")
    stored_name = name[:-3] if name.endswith(".gz") else name
    return (
        data[:3] + bytes([0x08]) + struct.pack("<I", mtime) + data[8:10]
        + stored_name.encode("latin-1") + b"\0" + data[10:]
    )


def _copy_fashion_file(
    src: Path, dest: Path, md5: str, mtime: int | None, origin: str
) -> str:
    """Copy one packaged Fashion-MNIST file, restoring its gzip header if needed; MD5-checked."""
    data = src.read_bytes()
    if hashlib.md5(data).hexdigest() == md5:
        how = "identical to the official file"
    else:
        if mtime is None:
            raise ChecksumError(f"{src} does not match the official MD5 {md5} and no original "
                                "gzip timestamp is known to rebuild it")
        rebuilt = restore_gzip_name_and_mtime(data, dest.name, mtime)
        actual = hashlib.md5(rebuilt).hexdigest()
        if actual != md5:
            raise ChecksumError(
                f"checksum mismatch for {dest.name} from {origin} ({src}), even after restoring "
                f"its gzip header:\n  md5: expected {md5}\n  md5: actual   {actual}\n"
                "The package carries different data than the official release: rerun with "
                f"--url {FASHION_MNIST_URL} to download from the official host instead."
            )
        data = rebuilt
        how = "gzip header restored, then identical to the official file"
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return how


def fetch_fashion_mnist(
    out: str | os.PathLike,
    *,
    base_url: str | None = None,
    source: str | os.PathLike | None = None,
    allow_apt: bool = True,
    md5: dict[str, str] = FASHION_MNIST_MD5,
    gzip_mtime: dict[str, int] = FASHION_MNIST_GZIP_MTIME,
) -> Path:
    """The four gzipped IDX files into `out`, each matching the official MD5.

    `base_url` forces a download from that folder URL; `source` copies from a local folder;
    otherwise the Debian package (installed with apt-get if missing and allowed), else the
    official host.
    """
    out = begin_fetch(Path(out))
    names = list(md5)
    files = [out / n for n in names]
    notes: dict[str, str] = {}
    if base_url is None and source is None:
        packaged = debian_files_or_install(FASHION_MNIST_DEB, allow_apt)
        if packaged is not None:
            by_name = {p.name: p for p in packaged}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise DataError(f"Debian package {FASHION_MNIST_DEB} lacks {missing}; "
                                f"reinstall it or run with --no-apt")
            version = debian_package_version(FASHION_MNIST_DEB)
            origin = f"Debian package {FASHION_MNIST_DEB} {version}"
            for n in names:
                notes[n] = _copy_fashion_file(by_name[n], out / n, md5[n], gzip_mtime.get(n),
                                              origin)
            return write_manifest(
                out, "fashion-mnist", files,
                source=f"{origin} (/usr/share/datasets/fashion-mnist); official MD5s verified",
                license="MIT (Zalando SE)", verification=notes,
            )
        log(f"Debian package {FASHION_MNIST_DEB} unavailable; using the official host")
    if source is not None:
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"--source {folder} must be a folder holding {', '.join(names)}")
        for n in names:
            if not (folder / n).is_file():
                raise DataError(f"--source {folder} lacks {n}")
            notes[n] = _copy_fashion_file(folder / n, out / n, md5[n], gzip_mtime.get(n),
                                          str(folder))
        origin = f"local copy {folder.resolve()}"
    else:
        base = (base_url or FASHION_MNIST_URL).rstrip("/") + "/"
        hint = (f"Without internet access here: download the four files {', '.join(names)} "
                f"from {base} (or install the Debian package {FASHION_MNIST_DEB}) and rerun "
                "with --source /path/to/that/folder.")
        for n in names:
            obtain_file(base + n, out / n, md5=md5[n], offline_hint=hint)
            notes[n] = "downloaded, MD5 verified"
        origin = base
    return write_manifest(out, "fashion-mnist", files, source=origin,
                          license="MIT (Zalando SE)", verification=notes)
