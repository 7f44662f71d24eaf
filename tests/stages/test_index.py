"""The results index (`normrepro.stages.index`): the grid's cells against the summary files."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from normrepro.errors import ConfigError
from normrepro.paper import load_paper
from normrepro.stages import index

REPLS = Path(__file__).resolve().parents[2] / "replications"


def _summary_rows(metric, arms: dict, diffs: dict) -> list[dict]:
    rows = []
    for name, (mean, lo, hi, n, div) in arms.items():
        rows.append({"kind": "arm", "name": name, "metric": metric, "n": n, "n_runs": n,
                     "n_diverged": div, "mean": mean, "ci_low": lo, "ci_high": hi})
    for name, (mean, lo, hi, n) in diffs.items():
        rows.append({"kind": "diff", "name": name, "metric": metric, "n": n, "n_runs": 2 * n,
                     "n_diverged": 0, "mean": mean, "ci_low": lo, "ci_high": hi})
    return rows


def _runs(folder: Path, arms: dict, speed_file: str, key: str) -> None:
    """runs.csv plus each run folder's throughput file: arm -> per-seed throughputs."""
    rows = []
    for arm, values in arms.items():
        for seed, v in enumerate(values):
            run = folder / arm / f"seed{seed}"
            run.mkdir(parents=True)
            if speed_file.endswith(".json"):
                (run / speed_file).write_text(json.dumps({key: v}))
            else:  # two epochs whose mean is v
                pd.DataFrame({"epoch": [1, 2], key: [v - 1, v + 1]}).to_csv(run / speed_file,
                                                                            index=False)
            rows.append({"arm": arm, "seed": seed, "status": "ok", "run_dir": f"{arm}/seed{seed}"})
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)


@pytest.fixture()
def results(tmp_path):
    res = tmp_path / "results"
    cx = res / "convnext" / "cpu" / "fashion-mnist"
    cx.mkdir(parents=True)
    # summary.csv holds `ln - bn` (the pair [bn, ln]): the index shows BN - LN, sign flipped
    pd.DataFrame(_summary_rows("test_top1",
                               {"bn": (88.5, 88.0, 89.0, 3, 0), "ln": (88.8, 88.6, 89.0, 3, 0)},
                               {"ln - bn": (0.3, -0.2, 0.9, 3)})).to_csv(cx / "summary.csv",
                                                                          index=False)
    _runs(cx, {"bn": [300.0, 310.0, 320.0], "ln": [400.0, 400.0, 400.0]}, "metrics.csv",
          "train_images_per_s")
    (res / "convnext" / "cpu" / "report.md").write_text("# ConvNeXt report title\n\ntext\n")
    pn = res / "powernorm" / "smoke" / "bible-de-en-smoke"
    pn.mkdir(parents=True)
    pd.DataFrame(_summary_rows("test_bleu_tok",
                               {"ln": (10.0, 9.0, 11.0, 3, 0), "bn": (8.0, 7.0, 9.0, 3, 1),
                                "pn": (10.5, 9.5, 11.5, 3, 0)},
                               {"pn - ln": (0.5, 0.1, 0.9, 3), "ln - bn": (2.0, 1.0, 3.0, 3)})
                 ).to_csv(pn / "summary.csv", index=False)
    _runs(pn, {"ln": [1000.0, 1200.0], "bn": [500.0], "pn": [900.0]}, "train.json",
          "train_tokens_per_s")
    return res


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells = []

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self.cells.append(dict(attrs))


def _f(value: str) -> float:
    return float(value)


def test_every_html_cell_matches_the_summary_files(results):
    grids = index.write_index(results, REPLS)
    for name in ("README.md", "index.html", "summary.png"):
        assert (results / name).stat().st_size > 0
    assert [g.profile for g in grids] == ["cpu", "smoke"]
    page = (results / "index.html").read_text()
    assert 'src="data:image/png;base64,' in page  # the figure travels with the page
    parser = _Cells()
    parser.feed(page)
    # profiles x rows (ConvNeXt, Transformer, ViT) x the columns some paper.yaml declares (all five)
    assert len(parser.cells) == 2 * 3 * 5
    by = {}
    for table_cells, grid in zip(_tables(page), grids):
        for c in table_cells:
            by[(grid.profile, c["data-row"], c["data-column"])] = c
    # convnext, cpu: BN - LN = -(ln - bn) with the interval flipped; LN its own mean
    bn = by[("cpu", "ConvNeXt / images", "BN")]
    assert bn["data-status"] == "ok" and bn["data-arm"] == "bn"
    assert (_f(bn["data-value"]), _f(bn["data-ci-low"]), _f(bn["data-ci-high"])) == (-0.3, -0.9, 0.2)
    assert _f(bn["data-speed"]) == pytest.approx(310.0 / 400.0)  # medians of the runs' means
    paper = load_paper(REPLS / "convnext" / "paper.yaml").regime()["arms"]
    assert _f(bn["data-paper"]) == pytest.approx(paper["bn"]["mean"] - paper["ln"]["mean"])
    ln = by[("cpu", "ConvNeXt / images", "LN")]
    assert (_f(ln["data-value"]), _f(ln["data-ci-low"]), _f(ln["data-ci-high"])) == (88.8, 88.6, 89.0)
    assert _f(ln["data-speed"]) == 1.0
    assert by[("cpu", "ConvNeXt / images", "PN")]["data-status"] == "absent"
    assert by[("cpu", "Transformer / text", "PN")]["data-status"] == "not_run"
    # powernorm, smoke: PN - LN as stored; BN - LN flipped; a divergence is shown and coloured
    pn = by[("smoke", "Transformer / text", "PN")]
    assert (_f(pn["data-value"]), _f(pn["data-ci-low"]), _f(pn["data-ci-high"])) == (0.5, 0.1, 0.9)
    assert pn["class"] == "better" and _f(pn["data-speed"]) == pytest.approx(900 / 1100)
    bnt = by[("smoke", "Transformer / text", "BN")]
    assert (_f(bnt["data-value"]), _f(bnt["data-ci-low"]), _f(bnt["data-ci-high"])) == (-2.0, -3.0, -1.0)
    assert bnt["class"] == "diverged"
    assert by[("smoke", "ConvNeXt / images", "BN")]["data-status"] == "not_run"
    readme = (results / "README.md").read_text()
    assert "-0.30 [-0.90, +0.20]" in readme and "1/3 runs diverged" in readme
    assert "make replicate-powernorm PROFILE=cpu" in readme
    assert "[ConvNeXt report title](convnext/cpu/report.md)" in readme


def _tables(page: str) -> list[list[dict]]:
    out = []
    for chunk in page.split('<table class="grid"')[1:]:
        p = _Cells()
        p.feed(chunk.split("</table>")[0])
        out.append(p.cells)
    return out


def test_no_results_still_writes_an_index(tmp_path):
    grids = index.write_index(tmp_path, REPLS)
    assert grids == [] and "No replication has results yet" in (tmp_path / "README.md").read_text()


def test_paper_yaml_index_rows_are_checked(tmp_path):
    src = (REPLS / "convnext" / "paper.yaml").read_text()
    for bad, message in [("columns: {bn: BN, ln: LN}", None),
                         ("columns: {bn: BN, ln: XN}", "not a grid column"),
                         ("columns: {bn: BN, ln: BN}", "two arms fill the column"),
                         ("columns: {bn: BN}", "reference column 'LN'"),
                         ("columns: {bx: BN, ln: LN}", "'bx' is not an arm")]:
        path = tmp_path / "paper.yaml"
        path.write_text(src.replace("columns: {bn: BN, ln: LN}", bad))
        if message is None:
            assert load_paper(path).data["index"][0]["columns"] == {"bn": "BN", "ln": "LN"}
        else:
            with pytest.raises(ConfigError, match=message):
                load_paper(path)


def test_the_index_lists_every_existing_report_with_its_command(tmp_path):
    for profile in ("cpu", "smoke"):  # every profile has its own folder and report
        (tmp_path / "insights" / profile).mkdir(parents=True)
        (tmp_path / "insights" / profile / "report.md").write_text(f"# Insights {profile}\n")
    index.write_index(tmp_path, REPLS)
    text = (tmp_path / "README.md").read_text()
    assert "[Insights cpu](insights/cpu/report.md)" in text
    assert "[Insights smoke](insights/smoke/report.md)" in text
    assert "`make replicate-insights PROFILE=smoke`" in text
    assert "convnext/" not in text  # no report there: not linked
