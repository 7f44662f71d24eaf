"""This task's half of the `prepare` stage: raw corpora → Moses tokens → joint BPE →
fairseq-binarized German→English data.

    python -m normrepro.stages.prepare --task translation bible-de-en --raw data/raw/bible-de-en \
        --out data/processed/bible-de-en [--options FILE]
    python -m normrepro.stages.prepare --task translation ding-de-en --raw data/raw/ding-de-en \
        --codes-from data/processed/bible-de-en --out data/processed/bible-de-en/ood-ding-de-en
    python -m normrepro.stages.prepare --task translation iwslt14 --raw data/raw/iwslt14 \
        --out data/processed/iwslt14

The options (`--options`, a YAML file) are the profile's `prepare.<dataset>` section, written by
`normrepro.plan` (`profile_options`) next to the processed folder.

Every dataset goes through the same steps as fairseq's `prepare-iwslt14.sh`: Moses tokenization
(`sacremoses`, no escaping of `&<>|'"`, which changes no BLEU score because hypothesis and reference
tokens map one to one), lowercasing, joint BPE learnt on the training split only (`subword-nmt`),
then `fairseq_cli.preprocess --joined-dictionary`. The output folder holds

    raw/{split}.{de,en}   detokenized text (the sacreBLEU references)
    tok/{split}.{de,en}   lowercased Moses tokens (the tokenized-BLEU references)
    bpe/{split}.{de,en}   BPE-segmented tokens (what fairseq binarizes)
    bpe.codes             the joint BPE codes
    bin/                  fairseq's dict.{de,en}.txt and {split}.de-en.{de,en}.{bin,idx}
    MANIFEST.json         options, sizes, versions, every file above with its size and sha256
                          (`files`) and the raw data's identity (`raw_fingerprint`); written
                          last (the make target); training and evaluation check the files

and is built in a temporary folder that replaces `--out` only when complete. Before anything is
read, the raw files are checked against their `MANIFEST.json` from the fetch (size and sha256).

Datasets:

* `bible-de-en`: Elberfelder 1905 (`bbName='e'`) and World English Bible (`bbName='4'`) verses of
  `bible.db`, joined on (book, chapter, verse): 31,102 pairs. The WEB writes apostrophes and inner
  quotes as backticks; they become `'`. The split is by chapter so that no verse of a test chapter
  is seen in training: chapters are ordered by the SHA-256 of "book.chapter" and taken for test
  until `test_verses` verses, then for valid until `valid_verses`, the rest is train. A `subset`
  option (smoke runs) keeps the first N verses of each split, in SHA-256 order of the verse key,
  among those with at most `max_words` words on both sides.
* `ding-de-en`: an out-of-domain test set made of the sentence-like entries of the Ding
  dictionary (`DE | DE :: EN | EN` lines, sub-entries aligned by position). A pair is kept when,
  after removing `{gender}`, `[domain]` and `<alt spelling>` notes and keeping the first of
  several `;`-separated sentences, both sides (1) start with a capital letter, digit or quote and
  end with `.`, `!` or `?` (optionally followed by a closing quote), (2) have 4–40 words, and (3)
  contain no `/` or `…` alternatives, no parentheses, no `;` and no placeholders (`etw.`, `jdn.`,
  `jdm.`, `jds.`, `sb.`, `sth.`). That keeps example sentences such as "Wie ist das Wetter? ::
  What is the weather like?" and drops headwords and phrase templates. Duplicated German sides
  are dropped; `max_pairs` keeps the first pairs in SHA-256 order. It is tokenized with the
  training data's BPE codes and binarized with its dictionary (`--codes-from`).
* `iwslt14`: `prepare-iwslt14.sh` in Python: drop `<url>`, `<talkid>`, `<keywords>` lines and the
  `<title>`/`<description>` tags of `train.tags.de-en.*`, tokenize, clean (1–175 words, length
  ratio ≤ 1.5, as `clean-corpus-n.perl`), lowercase, valid = every 23rd line, train = the rest;
  test = the `<seg>` lines of TED dev2010, TEDX dev2012, TED tst2010, tst2011, tst2012 with `’`
  replaced by `'`; joint BPE of 10,000 merges.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence


from normrepro import datacheck
from normrepro.errors import DataError, UserError
from normrepro.io import atomic_write_json
from normrepro.sources.bible import bible_pairs
from normrepro.sources.common import clean_space
from normrepro.sources.ding import ding_sentence_pairs
from normrepro.sources.iwslt14 import IWSLT_TEST_SETS, iwslt_dir, iwslt_test_lines, iwslt_train_lines

SRC, TGT = "de", "en"
SPLITS = ("train", "valid", "test")
DATASETS = ("bible-de-en", "ding-de-en", "iwslt14")

# Defaults per dataset; a profile may override any of them under `prepare.<dataset>`.
DEFAULT_OPTIONS = {
    "bible-de-en": {"bpe_size": 8000, "valid_verses": 1000, "test_verses": 1500, "subset": None,
                    "max_words": None},
    "ding-de-en": {"max_pairs": 1000},
    "iwslt14": {"bpe_size": 10000},
}


class PrepareError(DataError):
    """Raw input or options unusable; the message names the file or option and how to fix it."""


# ---------------------------------------------------------------------------------------------
# tokenization and BPE

_TOKENIZERS: dict = {}


def _tok_one(args: tuple[str, str]) -> str:
    lang, line = args
    from sacremoses import MosesTokenizer

    tok = _TOKENIZERS.get(lang)
    if tok is None:
        tok = _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    return tok.tokenize(line, escape=False, return_str=True)


def moses_tokenize(lines: Sequence[str], lang: str, workers: int = 1, lower: bool = True) -> list[str]:
    """Moses-tokenize (`sacremoses`, `tokenizer.perl -l lang` without escaping) and lowercase."""
    jobs = [(lang, line) for line in lines]
    if workers > 1 and len(jobs) > 2000:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            out = pool.map(_tok_one, jobs, chunksize=500)
    else:
        out = [_tok_one(j) for j in jobs]
    return [o.lower() for o in out] if lower else out


def learn_joint_bpe(train_files: Iterable[Path], codes: Path, num_symbols: int) -> None:
    """Learn `num_symbols` BPE merges on the concatenation of the training files of both sides."""
    from normrepro.progress import quiet_libraries

    # No tqdm frames in logs: tqdm reads TQDM_DISABLE when it is imported, so this comes first.
    quiet_libraries()
    from subword_nmt.learn_bpe import learn_bpe

    text = "".join(Path(f).read_text(encoding="utf-8") for f in train_files)
    import io

    with open(codes, "w", encoding="utf-8") as out:
        learn_bpe(io.StringIO(text), out, num_symbols)


def apply_bpe(codes: Path, lines: Sequence[str]) -> list[str]:
    from subword_nmt.apply_bpe import BPE

    with open(codes, encoding="utf-8") as fh:
        bpe = BPE(fh)
    return [bpe.process_line(line + "\n").rstrip("\n") for line in lines]


def binarize(destdir: Path, prefixes: dict[str, Path], srcdict: Path | None = None,
             workers: int = 1) -> None:
    """Run `fairseq_cli.preprocess` with a joined dictionary (built on train, or `srcdict`)."""
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", SRC,
           "--target-lang", TGT, "--joined-dictionary", "--destdir", str(destdir),
           "--workers", str(max(1, workers))]
    for split, prefix in prefixes.items():
        cmd += [f"--{split}pref", str(prefix)]
    if srcdict is not None:
        cmd += ["--srcdict", str(srcdict)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PrepareError(f"fairseq preprocess failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")


def write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            if "\n" in line:
                raise PrepareError(f"line with an embedded newline would misalign {path}: {line!r}")
            fh.write(line + "\n")


def read_lines(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Bible (verse pairs read by normrepro.sources.bible.bible_pairs)

def split_bible(pairs, valid_verses: int, test_verses: int) -> dict[str, list]:
    """Chapter-level split: hashed chapter order, test first, then valid, then train."""
    chapters: dict[tuple[int, int], list] = {}
    for key, de, en in pairs:
        chapters.setdefault(key[:2], []).append((key, de, en))
    order = sorted(chapters, key=lambda bc: _sha(f"{bc[0]}.{bc[1]}"))
    splits = {"train": [], "valid": [], "test": []}
    for bc in order:
        if len(splits["test"]) < test_verses:
            splits["test"] += chapters[bc]
        elif len(splits["valid"]) < valid_verses:
            splits["valid"] += chapters[bc]
        else:
            splits["train"] += chapters[bc]
    for name in splits:
        splits[name].sort(key=lambda p: p[0])
    return splits


def subset_split(items, n: int | None, max_words: int | None):
    """The first `n` pairs in SHA-256 order of their key among those with ≤ max_words words."""
    if max_words:
        items = [p for p in items if len(p[1].split()) <= max_words and len(p[2].split()) <= max_words]
    if n is None:
        return items
    chosen = sorted(items, key=lambda p: _sha(".".join(map(str, p[0]))))[:n]
    return sorted(chosen, key=lambda p: p[0])


# ---------------------------------------------------------------------------------------------
# Ding dictionary (out-of-domain test)

# ---------------------------------------------------------------------------------------------
# IWSLT14 (prepare-iwslt14.sh)

def clean_corpus(de: list[str], en: list[str], max_len: int = 175, ratio: float = 1.5) -> list[int]:
    """Indices kept by `clean-corpus-n.perl -ratio 1.5 ... 1 175` (whitespace-collapsed lines)."""
    keep = []
    for i, (d, e) in enumerate(zip(de, en)):
        nd, ne = len(d.split()), len(e.split())
        if nd < 1 or ne < 1 or nd > max_len or ne > max_len:
            continue
        if nd / ne > ratio or ne / nd > ratio:
            continue
        keep.append(i)
    return keep


# ---------------------------------------------------------------------------------------------
# output folder

def _write_split(tmp: Path, split: str, raw_de, raw_en, tok_de, tok_en) -> None:
    assert len(raw_de) == len(raw_en) == len(tok_de) == len(tok_en), split
    write_lines(tmp / "raw" / f"{split}.{SRC}", raw_de)
    write_lines(tmp / "raw" / f"{split}.{TGT}", raw_en)
    write_lines(tmp / "tok" / f"{split}.{SRC}", tok_de)
    write_lines(tmp / "tok" / f"{split}.{TGT}", tok_en)


def _bpe_and_binarize(tmp: Path, splits: Sequence[str], bpe_size: int | None, codes_from: Path | None,
                      workers: int) -> dict:
    codes = tmp / "bpe.codes"
    srcdict = None
    if codes_from is not None:
        shutil.copyfile(codes_from / "bpe.codes", codes)
        srcdict = codes_from / "bin" / f"dict.{SRC}.txt"
    else:
        learn_joint_bpe([tmp / "tok" / f"train.{SRC}", tmp / "tok" / f"train.{TGT}"], codes, bpe_size)
    stats = {}
    for split in splits:
        for lang in (SRC, TGT):
            segmented = apply_bpe(codes, read_lines(tmp / "tok" / f"{split}.{lang}"))
            write_lines(tmp / "bpe" / f"{split}.{lang}", segmented)
            stats[f"{split}.{lang}.bpe_tokens"] = sum(len(s.split()) + 1 for s in segmented)
        stats[f"{split}.sentences"] = len(read_lines(tmp / "tok" / f"{split}.{SRC}"))
    binarize(tmp / "bin", {s: tmp / "bpe" / s for s in splits}, srcdict=srcdict, workers=workers)
    return stats


def _publish(tmp: Path, out: Path, manifest: dict) -> None:
    manifest["files"] = datacheck.file_entries(tmp, datacheck.list_files(tmp, skip=("MANIFEST.json",)))
    atomic_write_json(tmp / "MANIFEST.json", manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _manifest(dataset: str, options: dict, stats: dict, started: float, **extra) -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("sacremoses", "subword-nmt", "ve-fairseq"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"dataset": dataset, "options": options, "stats": stats, "versions": versions,
            "seconds": round(time.time() - started, 1), **extra}


def prepare_bible(raw: Path, out: Path, options: dict, workers: int = 1, raw_fp: str | None = None) -> dict:
    started = time.time()
    pairs = bible_pairs(raw / "bible.db")
    splits = split_bible(pairs, int(options["valid_verses"]), int(options["test_verses"]))
    subset = options.get("subset") or {}
    if subset or options.get("max_words"):
        splits = {s: subset_split(splits[s], subset.get(s), options.get("max_words")) for s in SPLITS}
    for s in SPLITS:
        if not splits[s]:
            raise PrepareError(f"bible-de-en: the {s} split is empty; check the subset options {subset}")
    with _tmp_dir(out) as tmp:
        for s in SPLITS:
            de = [p[1] for p in splits[s]]
            en = [p[2] for p in splits[s]]
            _write_split(tmp, s, de, en, moses_tokenize(de, SRC, workers), moses_tokenize(en, TGT, workers))
        test_chapters = sorted({p[0][:2] for p in splits["test"]})
        leaked = [p[0] for p in splits["train"] if p[0][:2] in set(test_chapters)]
        if leaked:
            raise AssertionError(f"test chapters leaked into train: {leaked[:5]}")
        stats = _bpe_and_binarize(tmp, SPLITS, int(options["bpe_size"]), None, workers)
        stats["test_chapters"] = len(test_chapters)
        manifest = _manifest("bible-de-en", options, stats, started, source=str(raw / "bible.db"),
                             raw_fingerprint=raw_fp)
        _publish(tmp, out, manifest)
    return manifest


def prepare_ding(raw: Path, out: Path, options: dict, codes_from: Path, workers: int = 1,
                 raw_fp: str | None = None) -> dict:
    started = time.time()
    if not (codes_from / "bpe.codes").is_file() or not (codes_from / "bin" / f"dict.{SRC}.txt").is_file():
        raise PrepareError(f"--codes-from {codes_from} must be a prepared training dataset "
                           "(with bpe.codes and bin/dict.de.txt); prepare it first")
    pairs = ding_sentence_pairs(raw / "de-en.txt")
    n_candidates = len(pairs)
    if options.get("max_pairs"):
        pairs = sorted(pairs, key=lambda p: _sha(p[0]))[: int(options["max_pairs"])]
    with _tmp_dir(out) as tmp:
        de, en = [p[0] for p in pairs], [p[1] for p in pairs]
        _write_split(tmp, "test", de, en, moses_tokenize(de, SRC, workers), moses_tokenize(en, TGT, workers))
        stats = _bpe_and_binarize(tmp, ("test",), None, codes_from, workers)
        stats["candidates"] = n_candidates
        manifest = _manifest("ding-de-en", options, stats, started, codes_from=str(codes_from),
                             source=str(raw / "de-en.txt"), raw_fingerprint=raw_fp)
        _publish(tmp, out, manifest)
    return manifest


def prepare_iwslt14(raw: Path, out: Path, options: dict, workers: int = 1, raw_fp: str | None = None) -> dict:
    started = time.time()
    folder = iwslt_dir(raw)
    de_raw, en_raw = iwslt_train_lines(folder, SRC), iwslt_train_lines(folder, TGT)
    if len(de_raw) != len(en_raw):
        raise PrepareError(f"{folder}: train.tags files are not aligned ({len(de_raw)} German vs "
                           f"{len(en_raw)} English lines after removing the tag lines)")
    de_tok = moses_tokenize(de_raw, SRC, workers, lower=False)
    en_tok = moses_tokenize(en_raw, TGT, workers, lower=False)
    keep = clean_corpus(de_tok, en_tok)
    data = {"train": ([], [], [], []), "valid": ([], [], [], [])}
    for n, i in enumerate(keep, start=1):
        split = "valid" if n % 23 == 0 else "train"
        for lst, val in zip(data[split], (clean_space(de_raw[i]), clean_space(en_raw[i]),
                                          de_tok[i].lower(), en_tok[i].lower())):
            lst.append(val)
    test = ([], [])
    for name in IWSLT_TEST_SETS:
        test[0].extend(iwslt_test_lines(folder, name, SRC))
        test[1].extend(iwslt_test_lines(folder, name, TGT))
    if len(test[0]) != len(test[1]):
        raise PrepareError(f"{folder}: test sets are not aligned ({len(test[0])} vs {len(test[1])})")
    with _tmp_dir(out) as tmp:
        for split in ("train", "valid"):
            _write_split(tmp, split, *data[split])
        _write_split(tmp, "test", test[0], test[1], moses_tokenize(test[0], SRC, workers),
                     moses_tokenize(test[1], TGT, workers))
        stats = _bpe_and_binarize(tmp, SPLITS, int(options["bpe_size"]), None, workers)
        stats["train_tags_pairs"] = len(de_raw)
        stats["after_clean"] = len(keep)
        manifest = _manifest("iwslt14", options, stats, started, source=str(folder), raw_fingerprint=raw_fp)
        _publish(tmp, out, manifest)
    return manifest


class _tmp_dir:
    """A scratch folder next to `out`, removed unless it was published by renaming."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        return self.path

    def __exit__(self, *exc) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# options and CLI

def profile_options(repl_dir: Path, profile: str, dataset: str, overrides: Sequence[str] = ()) -> dict:
    """Defaults for `dataset` updated by `prepare.<dataset>` of the profile (base ⊕ profile ⊕
    command-line overrides)."""
    from normrepro.config import load_profile

    cfg = load_profile(repl_dir, profile, list(overrides))
    opts = dict(DEFAULT_OPTIONS[dataset])
    opts.update((cfg.get("prepare") or {}).get(dataset) or {})
    return opts


def run(dataset: str, raw: Path, out: Path, options: dict, codes_from: Path | None = None,
        workers: int = 1) -> dict:
    if dataset not in DATASETS:
        raise PrepareError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    opts = dict(DEFAULT_OPTIONS[dataset])
    unknown = set(options) - set(opts)
    if unknown:
        raise PrepareError(f"{dataset}: unknown prepare options {sorted(unknown)}; valid: {sorted(opts)}")
    opts.update(options)
    if dataset == "ding-de-en" and codes_from is None:
        raise PrepareError("ding-de-en is a test set only: pass --codes-from "
                           "data/processed/<training dataset> to reuse its BPE and dictionary")
    raw_fp = datacheck.raw_fingerprint(datacheck.verify_raw(raw, dataset))
    if dataset == "bible-de-en":
        return prepare_bible(raw, out, opts, workers, raw_fp)
    if dataset == "ding-de-en":
        return prepare_ding(raw, out, opts, codes_from, workers, raw_fp)
    return prepare_iwslt14(raw, out, opts, workers, raw_fp)


def run_stage(dataset: str, raw: Path, out: Path, options: dict | None = None,
              codes_from: Path | None = None) -> int:
    """The `prepare` stage for one corpus (`options`: the profile's, written by the plan)."""
    if dataset not in DATASETS:
        raise UserError(f"unknown translation data set {dataset!r}; choose from {', '.join(DATASETS)}")
    manifest = run(dataset, raw, out, dict(options or {}), codes_from, min(4, os.cpu_count() or 1))
    print(json.dumps({"out": str(out), **manifest["stats"]}, indent=1))
    return 0
