"""`replications/<name>/paper.yaml`: what a paper claims, checked when it is loaded.

Every replication's facts about its paper live in its paper.yaml and nowhere in Python: the
metric, the arms' order and labels, which arms summary.csv compares, the paper's numbers with
their sources, and each claim with its test. The summarize, plot and report stages read them
through `load_paper`, which checks the file against the schema below and fails with one line
naming the file and the key (`ConfigError`, the conventions of `normrepro.schema`).

    paper:    title, authors, venue, arxiv, url[, code]           the citation
    question: what the replication asks, in a line (the report's title)
    claim:    the paper's claim in words (the report's opening)
    metric:   name              summary.csv metric every claim is tested on (`test_top1`)
              label             the metric in a table or on an axis
              unit              of a difference between arms ("points", "BLEU")
              higher_is_better  true or false
              definition        how the paper measured its numbers (optional)
    arms:     arm -> display label, in report order; arms that ran but are not listed go
              after them, sorted by name
    pairs:    [a, b] lists: summary.csv gets one `b - a` row per pair whose arms both ran, in
              this order
    compare_unlisted_with: an arm of `arms`; every arm that ran but is not in `arms` gets a
              pair [this arm, it] after `pairs` (a new arm file is compared without an edit here)
    primary:  the `results` entry the verdicts and the ours-vs-paper figure compare with
    results:  <name>: label, source, arms: {<arm>: {mean[, std, source, note, derived]}};
              optionally seeds (absent or null: not stated), transcribed_from, spread,
              verified (every number checked against the printed paper), note,
              released_checkpoint {arm, mean, source}, abstract_difference {pair, diff, source}
    claims:   - id, text, a, b (tested as b - a), test, margin (non_inferiority only),
                optional secondary {text, test, margin}: a second test of the same pair,
                reported after the primary one
    notes:    differences in kind between the paper's comparison and ours (report bullets)
    setup:    dotted config key -> the paper's value (the report's deviation list)
    index:    rows of the results index's grid (`normrepro.stages.index`): each
              - row       "ConvNeXt / images": the grid row (architecture / data)
                columns   arm -> grid column (BN, PN, LN, RMS, DyT; the `LN` arm is the reference)
                dataset   only this data set's results (optional; default every one found)
                speed     {file, key, unit}: the runs' training throughput, read from each run
                          folder's `file` (a JSON key, or a CSV column averaged over its rows)

The verdict rule, one vocabulary for every replication (`verdict`): d = mean over seeds of
b[seed] - a[seed] (arms share seeds), [lo, hi] its paired-t 95% interval; with a metric where
lower is better the signs are flipped first, so "better" always means an improvement.

    b diverged in some run              -> contradicted when a never did, else inconclusive
    fewer than 2 seeds in both arms     -> inconclusive
    superiority (b better than a):      lo > 0 supported; hi < 0 contradicted; else inconclusive
    non_inferiority (b not worse than a by more than `margin`):
                                        hi < 0 contradicted (never supported with the whole
                                        interval on the wrong side of 0, even inside the
                                        margin); lo >= -margin supported; else inconclusive

Equivalence (|b - a| < margin both ways) is not a test type: no claim of either replication is
one. Adding it means a branch in `verdict`, its name in `TESTS` and the schema's Literal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional

from normrepro import schema
from normrepro.config import load_yaml
from normrepro.errors import ConfigError
from normrepro.stats import t_half_width, welch_from_stats

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
TESTS = ("superiority", "non_inferiority")


# ---------------------------------------------------------------------------------------------
# the schema (dataclasses as declarations, checked by normrepro.schema)

@dataclass
class _Citation:
    title: str
    authors: str
    venue: str
    arxiv: str
    url: str
    code: str


@dataclass
class _Metric:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    definition: str


@dataclass
class _PaperArm:
    mean: float
    std: Optional[schema.NonNegFloat]
    source: str
    note: str
    derived: bool


@dataclass
class _ReleasedCheckpoint:
    arm: str
    mean: float
    source: str


@dataclass
class _AbstractDifference:
    pair: list[str]
    diff: float
    source: str


@dataclass
class _Regime:
    label: str
    source: str
    transcribed_from: str
    seeds: Optional[schema.PosInt]
    spread: Optional[Literal["std"]]
    verified: bool
    note: str
    arms: dict[str, _PaperArm]
    released_checkpoint: _ReleasedCheckpoint
    abstract_difference: _AbstractDifference


Margin = Annotated[float, schema.POSITIVE]


@dataclass
class _Secondary:
    text: str
    test: Literal["superiority", "non_inferiority"]
    margin: Margin


@dataclass
class _Claim:
    id: str
    text: str
    a: str
    b: str
    test: Literal["superiority", "non_inferiority"]
    margin: Margin
    secondary: _Secondary


@dataclass
class _Speed:
    file: str
    key: str
    unit: str


@dataclass
class _IndexRow:
    row: str
    columns: dict[str, str]
    dataset: Optional[str]
    speed: _Speed


@dataclass
class _PaperFile:
    paper: _Citation
    question: str
    claim: str
    metric: _Metric
    arms: dict[str, str]
    pairs: list[list[str]]
    compare_unlisted_with: Optional[str]
    primary: str
    results: dict[str, _Regime]
    claims: list[_Claim]
    notes: list[str]
    setup: dict[str, Any]
    index: list[_IndexRow]


# The results index's grid columns (norm families, in order) and the one every cell is
# relative to (`normrepro.stages.index`).
GRID_COLUMNS = ("BN", "PN", "LN", "RMS", "DyT")
REFERENCE_COLUMN = "LN"

REQUIRED = {"": ("paper", "question", "claim", "metric", "arms", "primary", "results", "claims"),
            "paper": ("title", "authors", "venue", "arxiv", "url"),
            "metric": ("name", "label", "unit", "higher_is_better"),
            "regime": ("label", "source", "arms"),
            "claim": ("id", "text", "a", "b", "test"),
            "secondary": ("text", "test")}


# ---------------------------------------------------------------------------------------------
# what the stages use

@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    definition: str = ""


@dataclass(frozen=True)
class Test:
    """One test of a claim: `kind` is superiority or non_inferiority (with `margin`)."""

    kind: str
    text: str
    margin: float | None = None

    def describe(self, unit: str) -> str:
        """'superiority' / 'non-inferiority, margin 0.2 BLEU'."""
        words = self.kind.replace("_", "-")
        return words + (f", margin {self.margin:g} {unit}" if self.margin is not None else "")


@dataclass(frozen=True)
class Claim:
    """A claim `b` vs `a`, tested on summary.csv's row `b - a`; `tests[0]` is the primary test."""

    id: str
    text: str
    a: str
    b: str
    tests: tuple[Test, ...]

    @property
    def name(self) -> str:
        return f"{self.b} - {self.a}"


class Paper:
    """A checked paper.yaml: `data` is the file as read; the accessors are what stages need."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        m = data["metric"]
        self.metric = Metric(m["name"], m["label"], m["unit"], m["higher_is_better"],
                             m.get("definition", ""))
        self.labels: dict[str, str] = dict(data["arms"])
        self.primary: str = data["primary"]
        self.claims = tuple(_claim(c) for c in data["claims"])

    def label(self, arm: str) -> str:
        return self.labels.get(arm, arm)

    def arm_order(self, present: Iterable[str]) -> list[str]:
        """`present` in paper.yaml's order, then the arms it does not list, sorted."""
        present = set(present)
        return [a for a in self.labels if a in present] + sorted(present - set(self.labels))

    def pairs(self, present: Iterable[str]) -> list[tuple[str, str]]:
        """The (a, b) pairs whose arms both ran, for summary.csv's `b - a` rows."""
        order = self.arm_order(present)
        pairs = [(a, b) for a, b in self.data.get("pairs") or [] if a in order and b in order]
        base = self.data.get("compare_unlisted_with")
        if base in order:
            pairs += [(base, arm) for arm in order if arm not in self.labels]
        return pairs

    def regime(self, name: str | None = None) -> dict:
        return self.data["results"][name or self.primary]

    def numbers(self, name: str | None = None) -> dict:
        """The paper's numbers of one `results` entry (default: `primary`) in the shapes of our
        summary: each arm's mean and 95% t half-width, and each claim's `b - a` with a Welch 95%
        half-width. Intervals come from the stated std over `seeds` independent runs; with no
        std or one run they are NaN (a null `seeds`, not stated, counts as one run)."""
        name = name or self.primary
        r = self.data["results"][name]
        n = int(r.get("seeds") or 1)
        arms = []
        for arm in self.arm_order(r["arms"]):
            v = r["arms"][arm]
            std = v.get("std")
            arms.append({"name": arm, "label": self.label(arm), "mean": float(v["mean"]),
                         "std": std, "ci_half": t_half_width(std, n), "note": v.get("note", ""),
                         "source": v.get("source", ""), "derived": bool(v.get("derived"))})
        by = {a["name"]: a for a in arms}
        diffs = []
        for claim in self.claims:
            if claim.a in by and claim.b in by:
                a, b = by[claim.a], by[claim.b]
                w = welch_from_stats(a["mean"], a["std"], n, b["mean"], b["std"], n)
                diffs.append({"claim": claim.id, "name": claim.name, "a": claim.a, "b": claim.b,
                              "diff": w["diff"], "ci_half": w["ci_half"]})
        return {"regime": name, "label": r.get("label", name), "source": r.get("source", ""),
                "transcribed_from": r.get("transcribed_from"), "seeds": n,
                "seeds_stated": r.get("seeds"), "arms": arms, "diffs": diffs}


def _claim(c: dict) -> Claim:
    tests = [Test(c["test"], c["text"], c.get("margin"))]
    if c.get("secondary"):
        s = c["secondary"]
        tests.append(Test(s["test"], s["text"], s.get("margin")))
    return Claim(c["id"], c["text"], c["a"], c["b"], tuple(tests))


# ---------------------------------------------------------------------------------------------
# loading

def load_paper(path: str | Path) -> Paper:
    """Read and check a paper.yaml; any problem is one `ConfigError` naming the file and key."""
    path = Path(path)
    data = schema.check(load_yaml(path), _PaperFile, str(path))
    _check_required(data, path)
    _check_arms(data, path)
    return Paper(path, data)


def _missing(node: dict, keys: tuple[str, ...], where: str, path: Path) -> None:
    for key in keys:
        if key not in node:
            raise ConfigError(f"{path}: missing key {where + '.' if where else ''}{key}")


def _check_required(data: dict, path: Path) -> None:
    _missing(data, REQUIRED[""], "", path)
    _missing(data["paper"], REQUIRED["paper"], "paper", path)
    _missing(data["metric"], REQUIRED["metric"], "metric", path)
    if not data["arms"]:
        raise ConfigError(f"{path}: arms: list at least one arm (arm: display label)")
    if data["primary"] not in data["results"]:
        raise ConfigError(f"{path}: primary: {data['primary']!r} is not an entry of results "
                          f"({', '.join(data['results'])})")
    for name, r in data["results"].items():
        _missing(r, REQUIRED["regime"], f"results.{name}", path)
        for arm, v in r["arms"].items():
            _missing(v, ("mean",), f"results.{name}.arms.{arm}", path)
    for i, c in enumerate(data["claims"]):
        _missing(c, REQUIRED["claim"], f"claims[{i}]", path)
        tests = [(f"claims[{i}]", c)]
        if "secondary" in c:
            _missing(c["secondary"], REQUIRED["secondary"], f"claims[{i}].secondary", path)
            tests.append((f"claims[{i}].secondary", c["secondary"]))
        for where, t in tests:
            if t["test"] == "non_inferiority" and "margin" not in t:
                raise ConfigError(f"{path}: {where}.margin: a non_inferiority test needs a margin "
                                  f"(in {data['metric']['unit']}; the paper rarely states one: "
                                  "say where ours comes from)")
            if t["test"] == "superiority" and "margin" in t:
                raise ConfigError(f"{path}: {where}.margin: a superiority test takes no margin")


def _check_arms(data: dict, path: Path) -> None:
    """Every arm named anywhere is an arm of `arms`, every claim's pair is in `pairs`."""
    arms = list(data["arms"])

    def known(arm, where: str) -> None:
        if arm not in arms:
            raise ConfigError(f"{path}: {where}: {arm!r} is not an arm of `arms` "
                              f"({', '.join(arms)})")

    pairs = []
    for i, pair in enumerate(data.get("pairs") or []):
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"{path}: pairs[{i}]: {pair!r} must be two different arms [a, b]")
        for arm in pair:
            known(arm, f"pairs[{i}]")
        if tuple(pair) in pairs:
            raise ConfigError(f"{path}: pairs[{i}]: {pair!r} is listed twice")
        pairs.append(tuple(pair))
    if data.get("compare_unlisted_with") is not None:
        known(data["compare_unlisted_with"], "compare_unlisted_with")
    ids = set()
    for i, c in enumerate(data["claims"]):
        known(c["a"], f"claims[{i}].a")
        known(c["b"], f"claims[{i}].b")
        if (c["a"], c["b"]) not in pairs:
            raise ConfigError(f"{path}: claims[{i}]: the pair [{c['a']}, {c['b']}] is not in "
                              "`pairs`, so summary.csv would have no row to test it on")
        if c["id"] in ids:
            raise ConfigError(f"{path}: claims[{i}].id: {c['id']!r} is used twice")
        ids.add(c["id"])
    rows = set()
    for i, entry in enumerate(data.get("index") or []):
        where = f"index[{i}]"
        _missing(entry, ("row", "columns", "speed"), where, path)
        _missing(entry["speed"], ("file", "key", "unit"), f"{where}.speed", path)
        if entry["row"] in rows:
            raise ConfigError(f"{path}: {where}.row: {entry['row']!r} is listed twice")
        rows.add(entry["row"])
        columns = list(entry["columns"].values())
        for arm, column in entry["columns"].items():
            known(arm, f"{where}.columns")
            if column not in GRID_COLUMNS:
                raise ConfigError(f"{path}: {where}.columns.{arm}: {column!r} is not a grid "
                                  f"column ({', '.join(GRID_COLUMNS)})")
            if columns.count(column) > 1:
                raise ConfigError(f"{path}: {where}.columns: two arms fill the column {column!r}")
        if REFERENCE_COLUMN not in columns:
            raise ConfigError(f"{path}: {where}.columns: no arm fills the reference column "
                              f"{REFERENCE_COLUMN!r} (every cell is relative to it)")
    for name, r in data["results"].items():
        for arm in r["arms"]:
            known(arm, f"results.{name}.arms")
        if "released_checkpoint" in r:
            known(r["released_checkpoint"].get("arm"), f"results.{name}.released_checkpoint.arm")
        for arm in (r.get("abstract_difference") or {}).get("pair", []):
            known(arm, f"results.{name}.abstract_difference.pair")


# ---------------------------------------------------------------------------------------------
# the verdict

def verdict(test: str, d: float, lo: float, hi: float, margin: float | None, n_pairs: int,
            a: str, b: str, div_a: int = 0, div_b: int = 0, *, unit: str = "",
            higher_is_better: bool = True) -> tuple[str, str]:
    """(category, sentence) of one test of `b` against `a` by the rule in this module's
    docstring; `a` and `b` are the arms' display labels, `unit` that of a difference."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")
    if test == "non_inferiority" and margin is None:
        raise ValueError("a non_inferiority test needs a margin")
    if div_b:
        if div_a:
            return INCONCLUSIVE, (f"inconclusive: both arms diverged in some runs ({a}: {div_a}, "
                                  f"{b}: {div_b})")
        return CONTRADICTED, f"contradicted: {b} diverged in {div_b} run(s), {a} in none"
    if n_pairs < 2 or not all(math.isfinite(v) for v in (d, lo, hi)):
        return INCONCLUSIVE, ("inconclusive: a paired interval needs at least 2 seeds finished in "
                              f"both arms (have {n_pairs})")
    if not higher_is_better:
        d, lo, hi = -d, -hi, -lo
    u = f" {unit}" if unit else ""
    if lo > 0:
        return SUPPORTED, f"supported: {b} is better than {a} (the interval lies above 0)"
    if hi < 0:
        if test == "superiority":
            return CONTRADICTED, f"contradicted: {b} is worse than {a} (the interval lies below 0)"
        size = (f"by at most {margin:g}{u}, but" if lo >= -margin
                else f"possibly by more than {margin:g}{u};")
        return CONTRADICTED, (f"contradicted: {b} is worse than {a} {size} the whole interval lies "
                              "below 0")
    if test == "superiority":
        return INCONCLUSIVE, "inconclusive: the interval contains 0"
    if lo >= -margin:
        return SUPPORTED, (f"supported: {b} is not worse than {a} by more than {margin:g}{u} at 95% "
                           "confidence")
    return INCONCLUSIVE, (f"inconclusive: the interval contains both 0 and losses larger than "
                          f"{margin:g}{u}; more seeds would narrow it")


def judge(paper: Paper, claim: Claim, test: Test, rows) -> tuple[str, str]:
    """`verdict` of one test of `claim` from the summary rows of one metric, indexed by name
    (the claim's `b - a` row and, for the divergence counts, its arms' rows)."""
    d = rows.loc[claim.name]
    n = float(d["n"])
    n_pairs = int(n) if math.isfinite(n) else 0
    div = {arm: int(rows.loc[arm, "n_diverged"]) if arm in rows.index else 0
           for arm in (claim.a, claim.b)}
    return verdict(test.kind, float(d["mean"]), float(d["ci_low"]), float(d["ci_high"]),
                   test.margin, n_pairs, paper.label(claim.a), paper.label(claim.b),
                   div[claim.a], div[claim.b], unit=paper.metric.unit,
                   higher_is_better=paper.metric.higher_is_better)


def rule_text(metric: Metric) -> str:
    """The verdict rule in words, for a report."""
    u = metric.unit
    flip = ("" if metric.higher_is_better else
            f" Lower {metric.label} is better here, so the signs are flipped before the rule.")
    return ("Rule (every replication): d = mean over seeds of B[seed] − A[seed] (the arms share "
            "seeds), [lo, hi] its 95% paired-t interval. Superiority (B better than A): "
            "supported when lo > 0, contradicted when hi < 0, else inconclusive. "
            f"Non-inferiority with margin m (B not worse than A by more than m {u}): "
            "contradicted when hi < 0 (never supported with the whole interval below 0, even "
            "inside the margin), supported when lo ≥ −m, else inconclusive. Fewer than 2 seeds "
            "finished in both arms: inconclusive. A diverged run counts against its arm: when B "
            "diverged in some run, contradicted if A never did, else inconclusive." + flip)
