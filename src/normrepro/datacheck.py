"""Data integrity: every input file listed with its size and sha256, and checked before use.

Raw data: `data/raw/<dataset>/MANIFEST.json` (written by `normrepro.fetch`) lists each file with
its size and sha256. `verify_raw` checks them before a prepare stage reads anything: raw data is
never edited, so a mismatch means a damaged or replaced file, and the message names it and how to
fetch it again.

Processed data: a prepare stage lists what it wrote the same way, under `files` of its own
manifest (`prepared.json` for the ConvNeXt data, `MANIFEST.json` for the translation data), next
to `raw_fingerprint`, the identity of the raw data it was made from. Training and evaluation call
`verify_processed` on load. Hashes are cached by (size, mtime) in `.hashes.json` beside the files,
so a check costs one `stat` per file unless a file was rewritten.

`fingerprint(manifest)` is the identity of a processed data set's content (its files' hashes and
the raw data's); every run stamps it next to its config, so that a change of data retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from normrepro.errors import DataError
from normrepro.io import atomic_write_json

HASH_CACHE = ".hashes.json"
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _canonical_sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _HashCache:
    """sha256 of the files of one folder, remembered by (size, mtime_ns) in `.hashes.json`."""

    def __init__(self, folder: Path):
        self.path = folder / HASH_CACHE
        try:
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(self.entries, dict):
                self.entries = {}
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def sha256(self, file: Path, rel: str, st: os.stat_result) -> str:
        cached = self.entries.get(rel)
        if isinstance(cached, list) and cached[:2] == [st.st_size, st.st_mtime_ns]:
            return cached[2]
        digest = sha256_file(file)
        self.entries[rel] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            try:
                atomic_write_json(self.path, self.entries)
            except OSError:
                pass  # a read-only data folder is checked again next time, that is all


def list_files(folder: str | Path, exclude_dirs_with: str | None = None,
               skip: Iterable[str] = ()) -> list[str]:
    """Relative paths of the files under `folder` (sorted), without hidden files, `skip`, and
    subfolders holding their own `exclude_dirs_with` file (nested data sets)."""
    folder = Path(folder)
    skip = set(skip)
    out = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (
            exclude_dirs_with and (root_path / d / exclude_dirs_with).exists()))
        for name in files:
            rel = (root_path / name).relative_to(folder).as_posix()
            if not name.startswith(".") and rel not in skip:
                out.append(rel)
    return sorted(out)


def file_entries(folder: str | Path, rel_paths: Iterable[str]) -> list[dict]:
    """[{path, size, sha256}] of files under `folder`; seeds the folder's hash cache."""
    folder = Path(folder)
    cache = _HashCache(folder)
    entries = []
    for rel in rel_paths:
        file = folder / rel
        st = file.stat()
        entries.append({"path": rel, "size": st.st_size, "sha256": cache.sha256(file, rel, st)})
    cache.save()
    return entries


def raw_fingerprint(raw_manifest: dict) -> str:
    """Identity of a raw download: its files' hashes (and, for ImageNet, the recorded root)."""
    files = [(f.get("path"), f.get("size"), f.get("sha256")) for f in raw_manifest.get("files") or []]
    return _canonical_sha({"files": sorted(files, key=str), "root": raw_manifest.get("root")})


def fingerprint(manifest: dict) -> str:
    """Identity of a processed data set's content: its files' hashes and its raw data's."""
    files = [(f["path"], f["size"], f["sha256"]) for f in manifest.get("files") or []]
    return _canonical_sha({"files": sorted(files), "raw": manifest.get("raw_fingerprint")})


def load_manifest(path: Path, missing_hint: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found; {missing_hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); {missing_hint}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a manifest (a JSON object); {missing_hint}")
    return manifest


def _check_entry(folder: Path, entry: dict, manifest_path: Path, fix: str,
                 cache: _HashCache | None) -> None:
    rel = entry.get("path")
    file = folder / str(rel)
    if not file.is_file():
        raise DataError(f"{file} is missing (listed in {manifest_path}); {fix}")
    st = file.stat()
    if entry.get("size") is not None and st.st_size != entry["size"]:
        raise DataError(f"{file} has {st.st_size} bytes but {manifest_path} lists "
                        f"{entry['size']} (truncated or replaced); {fix}")
    want = entry.get("sha256")
    if want:
        got = cache.sha256(file, rel, st) if cache is not None else sha256_file(file)
        if got != want:
            raise DataError(f"{file} does not match {manifest_path} (sha256 {got[:12]}… instead "
                            f"of {want[:12]}…: changed after it was written); {fix}")


def verify_raw(raw: str | Path, dataset: str | None = None) -> dict:
    """Check every file of a raw download against its MANIFEST.json; returns the manifest."""
    raw = Path(raw)
    dataset = dataset or raw.name
    refetch = (f"fetch it again: rm -r {raw} && make {raw}/MANIFEST.json "
               f"(or python -m normrepro.fetch {dataset} --out {raw})")
    path = raw / "MANIFEST.json"
    manifest = load_manifest(path, f"fetch the data first: make {path} (or python -m "
                                   f"normrepro.fetch {dataset} --out {raw})")
    for entry in manifest.get("files") or []:
        _check_entry(raw, entry, path, refetch, cache=None)
    return manifest


def verify_processed(folder: str | Path, manifest: dict, manifest_path: str | Path,
                     fix: str) -> None:
    """Check the `files` of a processed data set's manifest (size, then sha256 cached by mtime)."""
    folder, manifest_path = Path(folder), Path(manifest_path)
    if "files" not in manifest:
        raise DataError(f"{manifest_path} lists no file hashes (it was written by an older "
                        f"version of normrepro); {fix}")
    cache = _HashCache(folder)
    try:
        for entry in manifest["files"]:
            _check_entry(folder, entry, manifest_path, fix, cache)
    finally:
        cache.save()
