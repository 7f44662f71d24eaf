"""What every data source shares: the manifest written last (the make stamp), atomic copies,
files obtained from a URL or a local copy with their checksum verified, Debian packages and PyPI
wheels as offline sources."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

from normrepro.download import (
    DataError,
    DownloadError,
    download,
    file_digest,
    verify_checksum,
)
from normrepro.io import atomic_path, atomic_write_json


MANIFEST = "MANIFEST.json"


class DatasetLayoutError(DataError):
    """A folder the user points to does not have the layout a data set needs."""


class CorpusError(DataError):
    """A raw corpus file missing or not what its reader expects; the message names the file and
    how to obtain it."""


def clean_space(text: str) -> str:
    """Runs of white space as one space, none at the ends."""
    return " ".join(text.split())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def begin_fetch(out: Path) -> Path:
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
    log(f"wrote {path} ({len(entries)} files, {total / 2**20:.1f} MiB)")
    return path


def copy_atomic(src: Path, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def obtain_file(
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
            copy_atomic(source, dest)
        return dest
    hint = offline_hint or (
        f"Without internet access here: download {url} on another machine, then rerun with "
        f"--source /path/to/{dest.name} (or put the file at {dest})."
    )
    return download(url, dest, md5=md5, sha256=sha256, offline_hint=hint)


# Debian packages ------------------------------------------------------------------------------


def run_quiet(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def debian_package_files(package: str) -> list[Path] | None:
    """Files installed by a Debian package, or None when it (or dpkg) is not there."""
    if shutil.which("dpkg-query") is None:
        return None
    status = run_quiet(["dpkg-query", "-W", "-f=${Status}", package])
    if status.returncode != 0 or "install ok installed" not in status.stdout:
        return None
    listing = run_quiet(["dpkg-query", "-L", package])
    return [Path(line) for line in listing.stdout.splitlines() if line and Path(line).is_file()]


def debian_package_version(package: str) -> str:
    return run_quiet(["dpkg-query", "-W", "-f=${Version}", package]).stdout.strip()


def debian_md5sums(package: str) -> dict[str, str]:
    """The package's own md5sums (what `dpkg --verify` checks), keyed by absolute path."""
    found = run_quiet(["dpkg-query", "--control-path", package, "md5sums"]).stdout.split()
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
        log(f"NORMREPRO_NO_APT is set: not installing {package}")
        return False
    if shutil.which("apt-get") is None:
        return False
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and run_quiet(["sudo", "-n", "true"]).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        log(f"{package} is not installed and apt-get needs root (no passwordless sudo); skipping")
        return False
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        log("+ " + " ".join(prefix + cmd))
        result = subprocess.run(prefix + env_prefix + cmd, check=False,
                                stdout=sys.stderr, stderr=sys.stderr)
        if result.returncode != 0:
            log(f"'{' '.join(cmd)}' failed with exit code {result.returncode}")
            return False
    return True


def debian_files_or_install(package: str, allow_apt: bool) -> list[Path] | None:
    files = debian_package_files(package)
    if files is None and allow_apt and apt_install(package):
        files = debian_package_files(package)
    return files


def pip_download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           requirement, "-d", str(dest)]
    log("+ " + " ".join(cmd))
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
