"""Stage `index`: the one-page answer to "why do Transformers use LayerNorm while ConvNets used
BatchNorm?", from every replication's finished results.

    python -m normrepro.stages.index --results results --replications replications

Writes, atomically:
  results/README.md     the grid per profile (markdown) and the list of every report
  results/index.html    the same, self-contained (summary.png embedded; reports linked
                        relatively), readable from disk without a server
  results/summary.png   the grid as a figure (one panel per profile)

The grid: one row per architecture / data pair, one column per norm family (`GRID_COLUMNS` of
`normrepro.paper`). Which replication fills which cell is declared in each replication's
`paper.yaml` (`index:` rows: the row's label, arm -> column, and where the runs record their
training throughput); nothing about a paper is written here. A cell holds, from files the
pipelines wrote:
  * the arm's metric relative to the same replication's LayerNorm arm: the mean over seeds of
    arm[seed] - LN[seed] and its paired 95 % interval (summary.csv's `diff` row of the pair,
    sign flipped when summary.csv holds LN - arm); the LN cell holds LN's mean and interval;
  * the paper's arm - LN (or LN value), from paper.yaml's primary `results` entry, when the
    paper reports both arms;
  * the training throughput relative to LN: the median over the arm's runs of `speed.key` in
    `speed.file` of each run folder, divided by LN's (the runs' own measurement, two runs side
    by side on CPU profiles; `make bench-*` holds the controlled benchmarks);
  * the runs that diverged, if any.
A declared cell without results says "not run" with the command that fills it. When several
replications fill the same row and column, the first with results wins: replications of a paper
before extensions (no paper numbers), each by name; each cell names the replication it is from.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from normrepro.errors import cli
from normrepro.io import atomic_write_bytes, atomic_write_text
from normrepro.paper import GRID_COLUMNS, REFERENCE_COLUMN, Paper, load_paper
from normrepro.report import relpath

# Profiles in the order the index shows them (others after, sorted).
PROFILE_ORDER = ("paper", "gpu", "cpu", "smoke")


@dataclass
class Cell:
    """One grid cell. `status`: ok (a result), not_run (declared, no result), absent (no
    replication declares this row and column)."""

    row: str
    column: str
    status: str
    replication: str = ""
    arm: str = ""
    command: str = ""
    reference: bool = False       # the LN cell: `value` is the metric itself
    value: float = math.nan       # arm - LN (or LN's mean)
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0                    # seed pairs (or LN's seeds)
    n_diverged: int = 0
    n_runs: int = 0
    paper: float = math.nan       # the paper's arm - LN (or LN value)
    speed: float = math.nan       # throughput / LN's throughput
    speed_unit: str = ""
    metric: str = ""              # the metric's label and unit
    unit: str = ""


@dataclass
class Grid:
    profile: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)   # summary.csv files read

    def cell(self, row: str, column: str) -> Cell:
        return self.cells.get((row, column)) or Cell(row, column, "absent")


# ---------------------------------------------------------------------------------------------
# reading

def _papers(replications: Path) -> dict[str, Paper]:
    """The replications that declare index rows: those with a paper's numbers first, then the
    extensions (no numbers in any `results` entry), each group by name."""
    found = []
    for path in sorted(replications.glob("*/paper.yaml")):
        paper = load_paper(path)
        if paper.data.get("index"):
            extension = not any(r.get("arms") for r in paper.data["results"].values())
            found.append((extension, path.parent.name, paper))
    return {name: paper for _, name, paper in sorted(found, key=lambda t: t[:2])}


def _profiles(results: Path, names) -> list[str]:
    found = {p.parent.parent.name for name in names
             for p in results.glob(f"{name}/*/*/summary.csv")}
    return [p for p in PROFILE_ORDER if p in found] + sorted(found - set(PROFILE_ORDER))


def _num(row, key: str, default=math.nan) -> float:
    v = row.get(key, default) if hasattr(row, "get") else default
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _diff_vs_reference(summary: pd.DataFrame, metric: str, arm: str, ref: str):
    """(arm - ref mean, ci_low, ci_high, n) from summary.csv, or None when it holds neither
    `arm - ref` nor `ref - arm` for `metric`."""
    d = summary[(summary["kind"] == "diff") & (summary["metric"] == metric)]
    for name, sign in ((f"{arm} - {ref}", 1.0), (f"{ref} - {arm}", -1.0)):
        hit = d[d["name"] == name]
        if not hit.empty:
            r = hit.iloc[0]
            lo, hi = _num(r, "ci_low") * sign, _num(r, "ci_high") * sign
            return (_num(r, "mean") * sign, min(lo, hi), max(lo, hi), int(_num(r, "n", 0)))
    return None


def _throughput(folder: Path, runs: pd.DataFrame, arm: str, speed: dict) -> float:
    """Median over the arm's finished runs of the run's recorded throughput."""
    values = []
    for r in runs[(runs["arm"] == arm) & (runs["status"] == "ok")].itertuples():
        path = folder / str(r.run_dir) / speed["file"]
        if not path.is_file():
            continue
        if path.suffix == ".json":
            v = _num(json.loads(path.read_text(encoding="utf-8")), speed["key"])
        else:
            col = pd.read_csv(path).get(speed["key"])
            v = float(col.mean()) if col is not None and col.notna().any() else math.nan
        if math.isfinite(v):
            values.append(v)
    return statistics.median(values) if values else math.nan


def _paper_value(paper: Paper, arm: str, ref: str) -> float:
    arms = paper.regime()["arms"]
    if arm not in arms or ref not in arms:
        return math.nan
    if arm == ref:
        return float(arms[ref]["mean"])
    return float(arms[arm]["mean"]) - float(arms[ref]["mean"])


def _fill(grid: Grid, results: Path, name: str, paper: Paper, entry: dict) -> None:
    command = f"make replicate-{name} PROFILE={grid.profile}"
    ref = next(a for a, c in entry["columns"].items() if c == REFERENCE_COLUMN)
    folders = sorted(p.parent for p in results.glob(f"{name}/{grid.profile}/*/summary.csv")
                     if entry.get("dataset") in (None, p.parent.name))
    metric = paper.metric
    tables = {}  # each folder's summary.csv and runs.csv, read once for every arm
    for folder in folders:
        runs_csv = folder / "runs.csv"
        tables[folder] = (pd.read_csv(folder / "summary.csv"), pd.read_csv(runs_csv)
                          if runs_csv.is_file() else pd.DataFrame(
                              columns=["arm", "status", "run_dir"]))
    for arm, column in entry["columns"].items():
        key = (entry["row"], column)
        if key in grid.cells and grid.cells[key].status == "ok":
            continue  # filled by a replication earlier in name order
        cell = Cell(entry["row"], column, "not_run", name, arm, command, reference=(arm == ref),
                    metric=metric.label, unit=metric.unit, speed_unit=entry["speed"]["unit"])
        for folder, (summary, runs) in tables.items():
            arm_row = summary[(summary["kind"] == "arm") & (summary["name"] == arm)
                              & (summary["metric"] == metric.name)]
            if arm_row.empty:
                continue
            a = arm_row.iloc[0]
            if arm == ref:
                cell.value, cell.ci_low, cell.ci_high = (_num(a, "mean"), _num(a, "ci_low"),
                                                         _num(a, "ci_high"))
                cell.n = int(_num(a, "n", 0))
            else:
                d = _diff_vs_reference(summary, metric.name, arm, ref)
                if d is None:
                    continue
                cell.value, cell.ci_low, cell.ci_high, cell.n = d
            cell.status = "ok"
            cell.n_diverged = int(_num(a, "n_diverged", 0))
            cell.n_runs = int(_num(a, "n_runs", _num(a, "n", 0)))
            ours, base = (_throughput(folder, runs, arm, entry["speed"]),
                          _throughput(folder, runs, ref, entry["speed"]))
            cell.speed = ours / base if base > 0 else math.nan
            cell.paper = _paper_value(paper, arm, ref)
            grid.sources.append(str(folder / "summary.csv"))
            break
        grid.cells[key] = cell


def build_grids(results: str | Path, replications: str | Path) -> list[Grid]:
    """One grid per profile with results; rows and columns as the replications declare them."""
    results, replications = Path(results), Path(replications)
    papers = _papers(replications)
    rows: list[str] = []
    columns: set[str] = set()
    for paper in papers.values():
        for entry in paper.data["index"]:
            rows += [entry["row"]] if entry["row"] not in rows else []
            columns |= set(entry["columns"].values())
    columns_ordered = [c for c in GRID_COLUMNS if c in columns]
    grids = []
    for profile in _profiles(results, papers):
        grid = Grid(profile, rows, columns_ordered)
        for name, paper in papers.items():
            for entry in paper.data["index"]:
                _fill(grid, results, name, paper, entry)
        grids.append(grid)
    return grids


def reports(results: Path) -> list[tuple[str, str, Path]]:
    """(replication, profile, report.md) for every report under results/, in index order."""
    found = []
    for report in results.glob("*/*/report.md"):
        found.append((report.parent.parent.name, report.parent.name, report))
    rank = {p: i for i, p in enumerate(PROFILE_ORDER)}
    return sorted(found, key=lambda t: (t[0], rank.get(t[1], len(rank)), t[1]))


def _title(report: Path) -> str:
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return report.parent.parent.name


# ---------------------------------------------------------------------------------------------
# formatting

def _f(x: float, digits: int = 2, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def cell_lines(cell: Cell) -> list[str]:
    """The cell's text, one item per line (shared by README.md, index.html and the figure)."""
    if cell.status == "absent":
        return ["—"]
    if cell.status == "not_run":
        return ["not run", f"`{cell.command}`"]
    if cell.reference:
        lines = [f"{_f(cell.value)} [{_f(cell.ci_low)}, {_f(cell.ci_high)}]",
                 f"{cell.metric}, {_count(cell.n, 'seed')} ({cell.replication})"]
    else:
        lines = [f"{_f(cell.value, signed=True)} [{_f(cell.ci_low, signed=True)}, "
                 f"{_f(cell.ci_high, signed=True)}]",
                 f"vs {cell.replication}'s LN, {_count(cell.n, 'paired seed')}"]
    if math.isfinite(cell.paper):
        lines.append(f"paper: {_f(cell.paper, signed=not cell.reference)}")
    if math.isfinite(cell.speed):
        lines.append(f"speed {cell.speed:.2f}× LN")
    if cell.n_diverged:
        lines.append(f"{cell.n_diverged}/{cell.n_runs} runs diverged")
    return lines


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _verdict_class(cell: Cell) -> str:
    if cell.status != "ok" or cell.reference:
        return cell.status if cell.status != "ok" else "reference"
    if cell.n_diverged:
        return "diverged"
    if cell.ci_low > 0:
        return "better"
    if cell.ci_high < 0:
        return "worse"
    return "unresolved"


LEGEND = ("Each cell: the arm's metric minus the same replication's LayerNorm arm, mean over "
          "seeds with its paired 95 % interval [low, high] (the LN cell: LN's own mean and "
          "interval); 'paper:' the same quantity in the paper, on the paper's own data, model and "
          "metric (each report says which), where it reports both arms; training throughput "
          "relative to LN in the same runs. 'not run' cells give the command that fills them; "
          "'—': no replication has this combination.")


def markdown(grids: list[Grid], results: Path, out: Path) -> str:
    parts = ["# Results",
             "_Generated by `make report` (`python -m normrepro.stages.index`), also run by every "
             "`make replicate-*`; do not edit by hand._",
             "## The answer in one grid",
             LEGEND,
             f"![summary]({relpath(out.parent / 'summary.png', out)}) — also as "
             f"[index.html]({relpath(out.parent / 'index.html', out)})."]
    if not grids:
        parts.append("No replication has results yet: run `make replicate-convnext` or "
                     "`make replicate-powernorm`.")
    for grid in grids:
        header = "| | " + " | ".join(grid.columns) + " |"
        sep = "|---|" + "---|" * len(grid.columns)
        lines = [f"### Profile `{grid.profile}`", header, sep]
        for row in grid.rows:
            cells = ["<br>".join(_md(x) for x in cell_lines(grid.cell(row, c)))
                     for c in grid.columns]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    rows = reports(results)
    listing = ["## Reports",
               "Each report states its question, shows its figures and the numbers read from the "
               "files next to it, and gives the command that regenerates it. Every profile writes "
               "to its own folder, `results/<replication>/<profile>/`, so a smoke run never "
               "replaces a cpu result."]
    if rows:
        listing.append("\n".join(["| report | profile | regenerate |", "|---|---|---|"] + [
            f"| [{_md(_title(r))}]({relpath(r, out)}) | `{p}` | `make replicate-{n} PROFILE={p}` |"
            for n, p, r in rows]))
    else:
        listing.append("No report yet.")
    parts += listing
    return "\n\n".join(parts) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def figure_png(grids: list[Grid]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"better": "#cdebc5", "worse": "#f6c9c4", "unresolved": "#ececec",
               "reference": "#ffffff", "diverged": "#f6c9c4", "not_run": "#fafafa",
               "absent": "#f4f4f4"}
    panels = grids or [Grid("none", [], [])]
    height = sum(1.2 + 1.1 * max(len(g.rows), 1) for g in panels)
    width = 2.2 + 2.6 * max((len(g.columns) for g in panels), default=1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, height), squeeze=False)
    for ax, grid in zip(axes[:, 0], panels):
        ax.set_xlim(0, len(grid.columns) + 0.8)
        ax.set_ylim(len(grid.rows), -0.5)
        ax.axis("off")
        ax.set_title(f"profile {grid.profile}: metric relative to LN (paired 95 % interval)"
                     if grid.rows else "no results yet", fontsize=10, loc="left")
        for j, column in enumerate(grid.columns):
            ax.text(1.3 + j, -0.25, column, ha="center", va="center", fontweight="bold")
        for i, row in enumerate(grid.rows):
            ax.text(0.0, i + 0.5, row.replace(" / ", "\n"), ha="left", va="center", fontsize=9)
            for j, column in enumerate(grid.columns):
                cell = grid.cell(row, column)
                ax.add_patch(plt.Rectangle((0.82 + j, i + 0.04), 0.96, 0.92,
                                           color=colours[_verdict_class(cell)], ec="#999999"))
                text = "\n".join(x.strip("`").replace(" PROFILE", "\nPROFILE")
                                 for x in cell_lines(cell))
                ax.text(1.3 + j, i + 0.5, text, ha="center", va="center", fontsize=6.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    return buf.getvalue()


def html_page(grids: list[Grid], results: Path, out: Path, png: bytes) -> str:
    esc = html.escape
    body = [f"<h1>Results</h1>",
            "<p><em>Generated by <code>make report</code>; do not edit by hand.</em></p>",
            f"<p>{esc(LEGEND)}</p>"]
    for grid in grids:
        body.append(f'<h2>Profile <code>{esc(grid.profile)}</code></h2>')
        body.append(f'<table class="grid" data-profile="{esc(grid.profile)}">')
        body.append("<tr><th></th>" + "".join(f"<th>{esc(c)}</th>" for c in grid.columns)
                    + "</tr>")
        for row in grid.rows:
            tds = []
            for column in grid.columns:
                cell = grid.cell(row, column)
                attrs = {"data-row": row, "data-column": column, "data-status": cell.status,
                         "data-replication": cell.replication, "data-arm": cell.arm,
                         "data-value": repr(cell.value), "data-ci-low": repr(cell.ci_low),
                         "data-ci-high": repr(cell.ci_high), "data-n": str(cell.n),
                         "data-speed": repr(cell.speed), "data-paper": repr(cell.paper),
                         "class": _verdict_class(cell)}
                text = "<br>".join(esc(x.strip("`")) for x in cell_lines(cell))
                tds.append("<td " + " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
                           + f">{text}</td>")
            body.append(f"<tr><th>{esc(row)}</th>" + "".join(tds) + "</tr>")
        body.append("</table>")
    body.append('<h2>Summary figure</h2><img alt="summary grid" src="data:image/png;base64,'
                + base64.b64encode(png).decode("ascii") + '">')
    body.append("<h2>Reports</h2><ul>")
    for name, profile, report in reports(results):
        body.append(f'<li><a href="{esc(relpath(report, out))}">{esc(_title(report))}</a> '
                    f"(<code>{esc(profile)}</code>; regenerate: <code>make replicate-{esc(name)} "
                    f"PROFILE={esc(profile)}</code>)</li>")
    body.append("</ul>")
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto}"
             "table.grid{border-collapse:collapse}td,th{border:1px solid #999;padding:.4em;"
             "font-size:90%;vertical-align:top}td.better{background:#cdebc5}"
             "td.worse,td.diverged{background:#f6c9c4}td.unresolved{background:#ececec}"
             "td.not_run,td.absent{color:#777}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>normrepro results</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_index(results: str | Path, replications: str | Path) -> list[Grid]:
    results = Path(results)
    grids = build_grids(results, replications)
    png = figure_png(grids)
    readme = results / "README.md"
    atomic_write_bytes(results / "summary.png", png)
    atomic_write_text(results / "index.html", html_page(grids, results, results / "index.html",
                                                         png))
    atomic_write_text(readme, markdown(grids, results, readme))
    return grids


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--replications", default="replications")
    args = parser.parse_args(argv)
    grids = write_index(args.results, args.replications)
    filled = sum(c.status == "ok" for g in grids for c in g.cells.values())
    print(f"[index] {args.results}/README.md, index.html, summary.png: {len(grids)} profile(s), "
          f"{filled} cell(s) with results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
