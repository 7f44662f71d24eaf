"""Checksum-verified, atomic downloads and extraction that cannot write outside its target.

Raw data is the root of every result in this project, so obtaining it follows three rules:

* a file appears at its destination only once it is complete and its pinned checksum matched
  (streamed to a temp file beside the destination, verified, then renamed);
* a mismatch or a network failure raises an error that says what failed and what to do, and leaves
  nothing behind that a later run could mistake for good data;
* archives are inspected in full before anything is written, and a member that would land outside
  the target folder (``../``, absolute paths, links pointing out, device files) refuses the whole
  archive. Extraction goes to a temp folder beside the target and is renamed into place, so an
  interrupted extraction leaves no half-filled folder.

Only the standard library is used (urllib, hashlib, tarfile, zipfile).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import posixpath
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from normrepro.io import atomic_path

__all__ = [
    "DataError",
    "DownloadError",
    "ChecksumError",
    "UnsafeArchiveError",
    "download",
    "file_digest",
    "verify_checksum",
    "safe_extract",
]

_CHUNK = 1 << 20
_USER_AGENT = "normrepro-fetch/0.1 (+python urllib)"


class DataError(RuntimeError):
    """Base class for every failure to obtain or validate raw data; the CLI prints these plainly."""


class DownloadError(DataError):
    """The bytes could not be fetched (network, HTTP status, truncated transfer)."""


class ChecksumError(DataError):
    """A file's digest differs from the pinned one."""


class UnsafeArchiveError(DataError):
    """An archive member would be written outside the target folder, or is a device file."""


# --------------------------------------------------------------------------------------------
# digests


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    out = {}
    if sha256:
        out["sha256"] = sha256.strip().lower()
    if md5:
        out["md5"] = md5.strip().lower()
    return out


def _digest_files(path: Path, algos: Iterable[str]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (`algo` is any hashlib name)."""
    return _digest_files(Path(path), [algo])[algo]


def _mismatch_message(
    name: str, source: str | None, expected: dict, actual: dict, discarded: bool = True
) -> str:
    lines = [f"checksum mismatch for {name}" + (f" (from {source})" if source else "") + ":"]
    for algo, exp in expected.items():
        if actual.get(algo) != exp:
            lines.append(f"  {algo}: expected {exp}")
            lines.append(f"  {algo}: actual   {actual.get(algo)}")
    lines.append(
        ("The file was not kept. Delete any cached copy and download it again; "
         if discarded else "Delete this copy and obtain the file again; ")
        + "if the mismatch persists, the host now serves a different release than the one "
        "pinned here (or a proxy rewrites it): check the source before changing the pinned "
        "checksum."
    )
    return "\n".join(lines)


def verify_checksum(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    source: str | None = None,
) -> dict[str, str]:
    """Check `path` against the given digests; return the computed ones.

    Raises `ChecksumError` (naming file, expected and actual digests) on a mismatch and
    `ValueError` when no digest is given, since "verified" must mean something.
    """
    expected = _expected(sha256, md5)
    if not expected:
        raise ValueError("verify_checksum needs sha256= or md5=")
    actual = _digest_files(Path(path), expected)
    if any(actual[a] != e for a, e in expected.items()):
        raise ChecksumError(_mismatch_message(str(path), source, expected, actual, False))
    return actual


# --------------------------------------------------------------------------------------------
# download


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60,
    offline_hint: str | None = None,
) -> Path:
    """Download `url` to `dest`, verified against `sha256`/`md5`, and return `dest`.

    If `dest` already exists and matches the checksum(s), nothing is fetched (so a file placed
    there by hand is the offline alternative). An existing file that does not match is removed
    first. Without any checksum an existing `dest` is trusted: it can only have been written
    whole, by this function or by hand. `offline_hint` is appended to network errors to tell the
    user how to obtain the file without this machine reaching the host.
    """
    dest = Path(dest)
    expected = _expected(sha256, md5)
    if dest.exists():
        if not expected:
            return dest
        actual = _digest_files(dest, expected)
        if all(actual[a] == e for a, e in expected.items()):
            return dest
        _log(f"{dest} does not match its pinned checksum; removing it and downloading again")
        dest.unlink()

    hint = f"\n{offline_hint}" if offline_hint else ""
    _log(f"downloading {url} -> {dest}")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with atomic_path(dest, suffix=".part") as tmp:
            hashers = {a: hashlib.new(a) for a in expected}
            received = 0
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp, \
                        open(tmp, "wb") as out:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    next_report = 0.1
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        received += len(chunk)
                        # A line per 10% is enough to see progress on the ~100 MB archives
                        # without flooding make's output.
                        if total and total > 8 * _CHUNK and received / total >= next_report:
                            _log(f"  {received / 2**20:.0f}/{total / 2**20:.0f} MiB")
                            next_report += 0.1
                    out.flush()
                    os.fsync(out.fileno())
            except urllib.error.HTTPError as exc:
                raise DownloadError(
                    f"download failed: HTTP {exc.code} {exc.reason} for {url}{hint}"
                ) from exc
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout,
                    TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(
                    f"download failed: cannot fetch {url} ({reason}); is this machine online?{hint}"
                ) from exc
            if total is not None and received != total:
                raise DownloadError(
                    f"download of {url} was truncated: got {received} of {total} bytes; "
                    f"run the command again{hint}"
                )
            actual = {a: h.hexdigest() for a, h in hashers.items()}
            if any(actual[a] != e for a, e in expected.items()):
                raise ChecksumError(_mismatch_message(dest.name, url, expected, actual))
    except OSError as exc:
        # Disk full, permission denied, ...: not the network's fault, but still a failed download.
        raise DownloadError(f"download of {url} to {dest} failed: {exc}{hint}") from exc
    _log(f"  ok: {dest} ({received} bytes, {', '.join(expected) or 'no checksum'} verified)")
    return dest


# --------------------------------------------------------------------------------------------
# safe extraction


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip") or name.endswith(".whl"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise ValueError(f"{archive}: not a .tar, .tar.gz/.tgz or .zip archive")


def _is_absolute(name: str) -> bool:
    # Windows drive letters too: archives made on Windows may carry them.
    return name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":")


def _split_member(name: str, archive: Path) -> list[str]:
    """Path components of a member name, refusing absolute paths and Windows drive letters."""
    raw = name.replace("\\", "/")
    if _is_absolute(raw):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has an absolute path; refusing to extract anything"
        )
    return [p for p in raw.split("/") if p not in ("", ".")]


class _LinkResolver:
    """Resolves member paths the way the filesystem will, following the archive's own symlinks.

    Checking `normpath(name)` alone is not enough: a symlink `a -> b/..` that looks harmless can be
    chained with others to climb out. Walking components and substituting every symlink created
    earlier in the archive catches such chains before anything is written.
    """

    def __init__(self, archive: Path):
        self.archive = archive
        self.links: dict[str, str] = {}

    def resolve(self, parts: list[str], what: str) -> list[str]:
        out: list[str] = []
        queue = list(parts)
        hops = 0
        while queue:
            part = queue.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not out:
                    raise UnsafeArchiveError(
                        f"{self.archive}: {what} would land outside the target folder; "
                        "refusing to extract anything"
                    )
                out.pop()
                continue
            out.append(part)
            target = self.links.get("/".join(out))
            if target is not None:
                hops += 1
                if hops > 64:
                    raise UnsafeArchiveError(f"{self.archive}: symlink loop at {what}")
                out.pop()
                queue = target.split("/") + queue
        return out

    def add_symlink(self, location: list[str], target: str) -> None:
        self.links["/".join(location)] = target


def _check_tar(archive: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    resolver = _LinkResolver(archive)
    members = tf.getmembers()
    for m in members:
        parts = _split_member(m.name, archive)
        if not parts:
            continue
        what = f"member {m.name!r}"
        if m.isdev():
            raise UnsafeArchiveError(
                f"{archive}: {what} is a device or FIFO; refusing to extract anything"
            )
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchiveError(f"{archive}: {what} has an unsupported type {m.type!r}")
        parent = resolver.resolve(parts[:-1], what)
        location = parent + [parts[-1]]
        if m.issym():
            link = m.linkname.replace("\\", "/")
            if _is_absolute(link):
                raise UnsafeArchiveError(
                    f"{archive}: symlink {m.name!r} -> {m.linkname!r} points to an absolute "
                    "path; refusing to extract anything"
                )
            resolver.resolve(parent + link.split("/"), f"symlink {m.name!r} -> {m.linkname!r}")
            # Stored relative to the link's folder: `resolve` substitutes it with `out` at the
            # link's parent, exactly as the kernel follows a relative symlink.
            resolver.add_symlink(location, link)
        else:
            resolver.resolve(location, what)
        if m.islnk():
            resolver.resolve(
                _split_member(m.linkname, archive), f"hardlink {m.name!r} -> {m.linkname!r}"
            )
    return members


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    resolver = _LinkResolver(archive)
    infos = zf.infolist()
    for info in infos:
        parts = _split_member(info.filename, archive)
        if not parts:
            continue
        what = f"member {info.filename!r}"
        mode = info.external_attr >> 16
        if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
            raise UnsafeArchiveError(
                f"{archive}: {what} is a device or FIFO; refusing to extract anything"
            )
        location = resolver.resolve(parts[:-1], what) + [parts[-1]]
        if mode and stat.S_ISLNK(mode):
            # zipfile writes a symlink entry as a plain file holding the target text, so it can
            # never be followed; an entry claiming to point outside is still a hostile archive.
            link = zf.read(info).decode("utf-8", "replace").replace("\\", "/")
            if _is_absolute(link):
                raise UnsafeArchiveError(
                    f"{archive}: symlink {info.filename!r} -> {link!r} points to an absolute "
                    "path; refusing to extract anything"
                )
            resolver.resolve(location[:-1] + link.split("/"), f"symlink {info.filename!r}")
        else:
            resolver.resolve(location, what)
    return infos


def _tar_data_filter():
    # PEP 706's 'data' filter (3.12, backported to 3.11.4+) re-checks every member against the
    # real filesystem during extraction: a second, independent line behind our own checks.
    return "data" if hasattr(tarfile, "data_filter") else None


def safe_extract(archive: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract a .tar, .tar.gz/.tgz or .zip archive into `target_dir`; return the files' paths.

    Every member is checked before anything is written; one unsafe member (absolute path, `..`
    escaping, symlink or hardlink resolving outside, device file) raises `UnsafeArchiveError` and
    nothing is extracted. Extraction happens in a temp folder beside `target_dir`; each top-level
    entry is then renamed into `target_dir`, replacing an older entry of the same name, so an
    interrupted run leaves either the old or the complete new entry, never a partial one.
    Returns the non-directory members at their final location, sorted.
    """
    archive = Path(archive)
    target = Path(target_dir)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    kind = _archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract.", dir=target.parent))
    try:
        if kind == "tar":
            try:
                with tarfile.open(archive, "r:*") as tf:
                    members = _check_tar(archive, tf)
                    names = [m.name for m in members if not m.isdir()]
                    data_filter = _tar_data_filter()
                    if data_filter:
                        tf.extractall(staging, members=members, filter=data_filter)
                    else:  # pragma: no cover - only on Python builds without PEP 706
                        tf.extractall(staging, members=members)
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                # A truncated .tgz surfaces as EOFError/zlib.error from the gzip layer.
                filter_error = getattr(tarfile, "FilterError", None)
                if filter_error is not None and isinstance(exc, filter_error):
                    raise UnsafeArchiveError(f"{archive}: {exc}; nothing extracted") from exc
                raise DataError(f"{archive} is not a readable tar archive ({exc}); delete it "
                                "and fetch it again") from exc
        else:
            try:
                with zipfile.ZipFile(archive) as zf:
                    infos = _check_zip(archive, zf)
                    names = [i.filename for i in infos if not i.is_dir()]
                    zf.extractall(staging, members=infos)
            except zipfile.BadZipFile as exc:
                raise DataError(f"{archive} is not a readable zip archive ({exc}); delete it "
                                "and fetch it again") from exc

        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(staging.iterdir()):
            final = target / entry.name
            if final.is_dir() and not final.is_symlink():
                # Move the old tree aside first so the new one appears by a single rename.
                old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old.", dir=target))
                os.replace(final, old / entry.name)
                os.replace(entry, final)
                shutil.rmtree(old)
            else:
                os.replace(entry, final)  # replaces an old file or symlink of that name
        rel = [_split_member(n, archive) for n in names]
        return sorted({target.joinpath(*parts) for parts in rel if parts})
    finally:
        shutil.rmtree(staging, ignore_errors=True)

