"""The Ding German-English dictionary: the Debian package `trans-de-en`, verified against the
package's own md5sums."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from normrepro.download import (
    DataError,
    verify_checksum,
)
from normrepro.io import atomic_path
from normrepro.sources.common import (
    CorpusError,
    clean_space,
    begin_fetch,
    debian_files_or_install,
    debian_md5sums,
    debian_package_version,
    write_manifest,
)


DING_DEB = "trans-de-en"


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
    out = begin_fetch(Path(out))
    if source is not None:
        src = Path(source)
        if not src.is_file():
            raise DataError(f"--source {src} is not a file")
        origin, verification = f"local copy {src.resolve()}", "none available (local copy)"
    else:
        files = debian_files_or_install(DING_DEB, allow_apt)
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


# ---------------------------------------------------------------------------------------------
# the corpus reader: sentence-like entries as an out-of-domain test set (the filter is described
# in normrepro.tasks.translation.prepare)

_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|<[^>]*>)")
_SENTENCE_ALTERNATIVES = re.compile(r"(?<=[.!?])\s*;\s+")
_REJECT = re.compile(r"(/|…|\(|\)|\.\.\.|;|\b(etw|jdn|jdm|jds|jd|sb|sth)\b\.?)", re.IGNORECASE)
_SENTENCE_SHAPE = re.compile(r"^[A-ZÄÖÜ0-9\"'„“].*[.!?][\"'“”]?$")


def ding_sentence_pairs(path: Path) -> list[tuple[str, str]]:
    """The sentence-like aligned sub-entries of a Ding `de-en.txt` (filter in the module doc)."""
    if not Path(path).is_file():
        raise CorpusError(f"{path} not found; run `python -m normrepro.fetch ding-de-en "
                           f"--out {Path(path).parent}` first")
    pairs, seen = [], set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#") or " :: " not in line:
                continue
            de, en = line.rstrip("\n").split(" :: ", 1)
            de_parts, en_parts = de.split(" | "), en.split(" | ")
            if len(de_parts) != len(en_parts):
                continue
            for d, e in zip(de_parts, en_parts):
                d = _SENTENCE_ALTERNATIVES.split(_ANNOTATION.sub("", d).strip())[0].strip()
                e = _SENTENCE_ALTERNATIVES.split(_ANNOTATION.sub("", e).strip())[0].strip()
                d, e = clean_space(d.replace("’", "'")), clean_space(e.replace("’", "'"))
                if _REJECT.search(d) or _REJECT.search(e):
                    continue
                if not (_SENTENCE_SHAPE.match(d) and _SENTENCE_SHAPE.match(e)):
                    continue
                if not (4 <= len(d.split()) <= 40 and 4 <= len(e.split()) <= 40):
                    continue
                if d in seen:
                    continue
                seen.add(d)
                pairs.append((d, e))
    if not pairs:
        raise CorpusError(f"{path}: no sentence-like entries found; is it the Ding de-en.txt?")
    return pairs
