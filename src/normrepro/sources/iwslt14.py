"""IWSLT14 German-English: `de-en.tgz` from the URL fairseq's `prepare-iwslt14.sh` uses, MD5
pinned."""

from __future__ import annotations

import re
from pathlib import Path

from normrepro.download import (
    DataError,
    safe_extract,
)
from normrepro.sources.common import (
    CorpusError,
    begin_fetch,
    obtain_file,
    write_manifest,
)


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

def fetch_iwslt14(out, *, url: str | None = None, source=None, md5: str = IWSLT14_MD5) -> Path:
    """IWSLT14 De-En: `de-en.tgz` (MD5-pinned) extracted to `out/de-en/`."""
    out = begin_fetch(Path(out))
    url = url or IWSLT14_URL
    archive = out / "de-en.tgz"
    obtain_file(url, archive, md5=md5, source=source)
    extracted = safe_extract(archive, out)
    missing = [rel for rel in IWSLT14_REQUIRED if not (out / rel).is_file()]
    if missing:
        raise DataError(f"{archive} lacks files prepare-iwslt14 needs: {missing}")
    return write_manifest(
        out, "iwslt14", [archive, *extracted],
        source=f"{url} (md5 {md5}; the archive fairseq's prepare-iwslt14.sh uses)",
        license="TED talks transcripts: CC BY-NC-ND 4.0 (IWSLT 2014 evaluation campaign)",
    )


# ---------------------------------------------------------------------------------------------
# the corpus readers (prepare-iwslt14.sh's text handling; normrepro.tasks.translation.prepare
# tokenizes, cleans, splits and binarizes)

_TRAIN_DROP = ("<url>", "<talkid>", "<keywords>")
_TRAIN_STRIP = re.compile(r"</?(title|description)>")
_SEG = re.compile(r'<seg id="[0-9]*">\s*(.*?)\s*</seg>')
IWSLT_TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
                   "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")


def iwslt_dir(raw: Path) -> Path:
    for cand in (raw / "de-en", raw):
        if (cand / "train.tags.de-en.de").is_file():
            return cand
    raise CorpusError(f"{raw}/de-en/train.tags.de-en.de not found; run `python -m "
                       f"normrepro.fetch iwslt14 --out {raw}` first")


def iwslt_train_lines(folder: Path, lang: str) -> list[str]:
    out = []
    for line in (folder / f"train.tags.de-en.{lang}").read_text(encoding="utf-8").split("\n"):
        if any(tag in line for tag in _TRAIN_DROP):
            continue
        out.append(_TRAIN_STRIP.sub("", line))
    if out and out[-1] == "":
        out.pop()
    return out


def iwslt_test_lines(folder: Path, name: str, lang: str) -> list[str]:
    path = folder / f"{name}.de-en.{lang}.xml"
    if not path.is_file():
        raise CorpusError(f"{path} not found; the IWSLT14 de-en archive seems incomplete")
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if "<seg id" in line:
            m = _SEG.search(line)
            out.append((m.group(1) if m else line).replace("’", "'"))
    return out
