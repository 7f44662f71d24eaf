"""paper.yaml: the schema both replications' files follow, the arms' order and pairs it gives the
summaries, the paper's numbers in our summary's shapes, and the one verdict rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from normrepro.errors import ConfigError
from normrepro.paper import load_paper, verdict
from normrepro.stats import diff_ci, welch_from_stats

ROOT = Path(__file__).resolve().parents[2] / "replications"
PAPERS = sorted(ROOT.glob("*/paper.yaml"))


@pytest.mark.parametrize("path", PAPERS, ids=lambda p: p.parent.name)
def test_every_paper_yaml_loads(path):
    paper = load_paper(path)
    arms = {p.stem for p in (path.parent / "arms").glob("*.yaml")}
    assert set(paper.labels) <= arms  # every labelled arm has its arm file
    assert paper.metric.name and paper.claims
    for claim in paper.claims:
        assert (claim.a, claim.b) in paper.pairs(arms)  # summary.csv has its row


def test_both_replications_are_in_the_list():
    assert {p.parent.name for p in PAPERS} >= {"convnext", "powernorm"}


# ---------------------------------------------------------------- errors: one line, file and key

def _write(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((ROOT / "powernorm" / "paper.yaml").read_text())
    edit(data)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["claims"][0]["secondary"].update(mragin=0.2), "unknown key 'claims[0].secondary.mragin'; did you mean claims[0].secondary.margin?"),
    (lambda d: d["claims"][0].update(test="superior"), "claims[0].test: 'superior' is not a valid choice; did you mean 'superiority'?"),
    (lambda d: d["claims"][0]["secondary"].pop("margin"), "claims[0].secondary.margin: a non_inferiority test needs a margin"),
    (lambda d: d["claims"][1].update(margin=0.1), "claims[1].margin: a superiority test takes no margin"),
    (lambda d: d["claims"][1].update(b="pm"), "claims[1].b: 'pm' is not an arm of `arms`"),
    (lambda d: d["pairs"].remove(["bn", "ln"]), "claims[1]: the pair [bn, ln] is not in `pairs`"),
    (lambda d: d.update(primary="iwslt15"), "primary: 'iwslt15' is not an entry of results"),
    (lambda d: d["results"]["iwslt14"]["arms"]["ln"].update(mean="high"), "results.iwslt14.arms.ln.mean: 'high' is not a number"),
    (lambda d: d["results"]["iwslt14"]["arms"]["bn"].pop("mean"), "missing key results.iwslt14.arms.bn.mean"),
    (lambda d: d["metric"].pop("unit"), "missing key metric.unit"),
    (lambda d: d.update(compare_unlisted_with="xx"), "compare_unlisted_with: 'xx' is not an arm"),
    (lambda d: d["pairs"].append(["ln", "ln"]), "must be two different arms"),
])
def test_a_bad_paper_yaml_fails_in_one_line_naming_file_and_key(tmp_path, edit, message):
    path = _write(tmp_path, edit)
    with pytest.raises(ConfigError) as exc:
        load_paper(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


# ---------------------------------------------------------------- arm order and pairs

def test_arm_order_lists_paper_yaml_arms_first_then_the_others_sorted():
    paper = load_paper(ROOT / "convnext" / "paper.yaml")
    assert paper.arm_order(["ln", "zz", "bn", "aa"]) == ["bn", "ln", "aa", "zz"]
    assert paper.label("ln") == "LN" and paper.label("aa") == "aa"


# The pairs the summaries produced before paper.yaml held them (the Python rules they replace):
# every ConvNeXt arm against bn; PowerNorm's fixed list, then every unlisted arm against ln.
@pytest.mark.parametrize("repl, arms, pairs", [
    ("convnext", ["bn", "ln"], [("bn", "ln")]),
    ("convnext", ["bn", "bn_sync", "ln"], [("bn", "bn_sync"), ("bn", "ln")]),
    ("convnext", ["ln", "group", "bn"], [("bn", "ln"), ("bn", "group")]),
    ("convnext", ["ln", "group"], []),
    ("powernorm", ["ln", "bn", "pn_v", "pn"],
     [("ln", "pn"), ("bn", "ln"), ("ln", "pn_v"), ("pn_v", "pn"), ("bn", "pn")]),
    ("powernorm", ["ln", "bn", "bn_masked", "pn_v", "pn", "bn_dec", "pn_dec"],
     [("ln", "pn"), ("bn", "ln"), ("ln", "pn_v"), ("pn_v", "pn"), ("bn", "pn"), ("ln", "bn_dec"),
      ("ln", "pn_dec"), ("bn", "bn_dec"), ("pn", "pn_dec"), ("bn_masked", "ln"), ("bn", "bn_masked")]),
    ("powernorm", ["ln", "rms", "dyt"], [("ln", "dyt"), ("ln", "rms")]),
    ("powernorm", ["bn", "rms"], []),
])
def test_pairs(repl, arms, pairs):
    assert load_paper(ROOT / repl / "paper.yaml").pairs(arms) == pairs


# ---------------------------------------------------------------- the paper's numbers

def test_paper_numbers_in_the_shapes_of_our_summary():
    path = ROOT / "convnext" / "paper.yaml"
    raw = yaml.safe_load(path.read_text())
    numbers = load_paper(path).numbers()
    primary = raw["results"][raw["primary"]]["arms"]
    assert [a["mean"] for a in numbers["arms"]] == [primary["bn"]["mean"], primary["ln"]["mean"]]
    (d,) = numbers["diffs"]
    assert d["name"] == "ln - bn"
    assert d["diff"] == pytest.approx(primary["ln"]["mean"] - primary["bn"]["mean"])
    # The Welch interval from summary statistics matches the one from raw values with that spread.
    ref = diff_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    got = welch_from_stats(2.0, 1.0, 3, 4.0, 2.0, 3)
    assert got["diff"] == pytest.approx(ref["diff"]) and got["ci_half"] == pytest.approx(ref["ci_half"])
    assert math.isnan(welch_from_stats(1.0, None, 3, 2.0, 0.1, 3)["ci_half"])
    # One run per arm (PowerNorm's Table 1), or no seed count stated: no interval.
    pn = load_paper(ROOT / "powernorm" / "paper.yaml")
    assert all(math.isnan(d["ci_half"]) for d in pn.numbers()["diffs"])
    assert math.isnan(load_paper(path).numbers("resnet200_regime")["diffs"][0]["ci_half"])


# ---------------------------------------------------------------- the verdict rule

# signature: test, d, lo, hi, margin, n_pairs, a, b, div_a, div_b
@pytest.mark.parametrize("args, category, phrase", [
    (("superiority", 1.0, 0.2, 1.8, None, 3), "supported", "B is better than A"),
    (("superiority", -1.0, -1.8, -0.2, None, 3), "contradicted", "B is worse than A"),
    (("superiority", 0.1, -0.3, 0.5, None, 3), "inconclusive", "contains 0"),
    (("superiority", 1.0, 0.2, 1.8, None, 1), "inconclusive", "at least 2 seeds"),
    (("non_inferiority", 0.8, 0.2, 1.4, 0.5, 3), "supported", "B is better than A"),
    (("non_inferiority", 0.3, -0.1, 0.7, 0.5, 3), "supported", "not worse than A by more than 0.5 points"),
    (("non_inferiority", -0.05, -0.15, 0.05, 0.2, 3), "supported", "by more than 0.2 points"),
    (("non_inferiority", -0.2, -1.2, 0.8, 0.5, 3), "inconclusive", "more seeds"),
    (("non_inferiority", -0.1, -0.4, 0.2, 0.2, 3), "inconclusive", "losses larger than 0.2"),
    # never "supported" with the whole interval on the wrong side of 0, even inside the margin
    (("non_inferiority", -0.3, -0.45, -0.15, 0.5, 3), "contradicted", "by at most 0.5 points, but the whole interval lies below 0"),
    (("non_inferiority", -1.5, -2.0, -1.0, 0.5, 3), "contradicted", "possibly by more than 0.5 points"),
    (("non_inferiority", 0.1, float("nan"), float("nan"), 0.5, 1), "inconclusive", "at least 2"),
])
def test_verdict_rule(args, category, phrase):
    got, sentence = verdict(*args, "A", "B", unit="points")
    assert got == category and sentence.startswith(category) and phrase in sentence


def test_verdict_counts_divergence_against_the_arm_claimed_better():
    for test, margin in (("superiority", None), ("non_inferiority", 0.5)):
        args = (test, 0.8, 0.2, 1.4, margin, 3, "A", "B")
        assert verdict(*args, 0, 1)[0] == "contradicted"
        assert verdict(*args, 1, 1)[0] == "inconclusive"
        assert verdict(*args, 1, 0)[0] == "supported"


def test_verdict_when_lower_is_better():
    # b − a = −1 on a loss: b improved.
    assert verdict("superiority", -1.0, -1.5, -0.5, None, 3, "A", "B",
                   higher_is_better=False)[0] == "supported"
    assert verdict("non_inferiority", 0.3, 0.1, 0.6, 0.2, 3, "A", "B",
                   higher_is_better=False)[0] == "contradicted"
    with pytest.raises(ValueError, match="margin"):
        verdict("non_inferiority", 0.3, 0.1, 0.6, None, 3, "A", "B")
    with pytest.raises(ValueError, match="unknown test"):
        verdict("equivalence", 0.3, 0.1, 0.6, 0.2, 3, "A", "B")
