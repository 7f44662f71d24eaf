"""Building blocks for the markdown reports of every replication.

Markdown tables from tables of results, an inline figure line, a "how to regenerate" block, the
documentation of a CSV's columns, an environment section assembled from the runs' `env.json`
files (hardware, git commit and dirty flag, package versions, wall time), and the verdict on each
claim of a paper.yaml (`claim_lines`, by the one rule of `normrepro.paper`). A replication's
report stage composes these; every number it prints must come from a file under `results/` or
from paper.yaml, which is why these helpers take tables and paths rather than numbers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from normrepro.io import atomic_write_text
from normrepro.paper import judge
from normrepro.provenance import hardware_summary


def fmt_num(value, digits: int = 2) -> str:
    """A table cell: floats with fixed digits, 'n/a' for None/NaN; ints and strings unchanged."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value  # already formatted (e.g. "+0.06", "81.41 ± 0.09")
    if isinstance(value, int):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_signed(value, digits: int = 2) -> str:
    """'+0.06' / '-1.20', 'n/a' for None/NaN: a difference between arms."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{x:+.{digits}f}" if math.isfinite(x) else "n/a"


def fmt_duration(seconds) -> str:
    """'42 s', '3.5 min' or '2.1 h'."""
    if seconds is None or not math.isfinite(float(seconds)):
        return "n/a"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows, columns: Sequence[str] | Mapping[str, str] | None = None,
                   digits: int | Mapping[str, int] = 2, align: Mapping[str, str] | None = None) -> str:
    """A GitHub markdown table.

    `rows` is a list of dicts or a pandas DataFrame; `columns` picks and orders the columns, a
    mapping renames them (key = column, value = header). `digits` is one precision for every float
    or a per-column mapping. Numeric columns are right-aligned unless `align` says otherwise.
    """
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    keys = list(headers)
    align = dict(align or {})

    def prec(key: str) -> int:
        return digits.get(key, 2) if isinstance(digits, Mapping) else digits

    body = [[_escape(fmt_num(row.get(k), prec(k))) for k in keys] for row in rows]
    for key in keys:
        if key not in align:
            numeric = bool(rows) and all(_is_number(row.get(key)) for row in rows)
            align[key] = "right" if numeric else "left"
    sep = ["---:" if align[k] == "right" else ":---" for k in keys]
    lines = ["| " + " | ".join(_escape(headers[k]) for k in keys) + " |",
             "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _is_number(value) -> bool:
    """True for numbers, and for None (a missing cell should not left-align a numeric column)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def relpath(path: str | Path, start_file: str | Path) -> str:
    """`path` relative to the folder of `start_file`, with forward slashes (markdown links)."""
    return Path(os.path.relpath(Path(path), Path(start_file).parent)).as_posix()


def figure_line(png: str | Path, report_path: str | Path, alt: str) -> str:
    """An inline image plus a link to the PDF twin (same stem), relative to the report."""
    png = Path(png)
    rel_png = relpath(png, report_path)
    pdf = png.with_suffix(".pdf")
    line = f"![{alt}]({rel_png})"
    if pdf.exists():
        line += f"  \n[PDF]({relpath(pdf, report_path)})"
    return line


def regenerate_block(commands: Iterable[str], note: str | None = None) -> str:
    """A fenced bash block with the commands that rebuild the report from scratch."""
    text = "```bash\n" + "\n".join(commands) + "\n```"
    return f"{note}\n\n{text}" if note else text


def column_docs(columns: Mapping[str, str]) -> str:
    """A bullet list documenting a CSV's columns."""
    return "\n".join(f"- `{name}`: {doc}" for name, doc in columns.items())


def load_env_files(paths: Iterable[str | Path]) -> list[dict]:
    envs = []
    for path in map(Path, paths):
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                envs.append(json.load(fh))
    return envs


def environment_summary(envs: Sequence[dict]) -> dict:
    """Aggregate env.json dicts: distinct hardware/commits/versions, total and max wall time."""
    hardware = sorted({hardware_summary(e.get("hardware", {})) for e in envs})
    commits = sorted({(str((e.get("git") or {}).get("commit") or "unknown")[:12],
                       bool((e.get("git") or {}).get("dirty"))) for e in envs})
    versions: dict[str, set] = {}
    for e in envs:
        for name, ver in (e.get("packages") or {}).items():
            if ver is not None:
                versions.setdefault(name, set()).add(str(ver))
    walls = [float(e["wall_time_s"]) for e in envs
             if isinstance(e.get("wall_time_s"), (int, float))]
    return {
        "n": len(envs),
        "hardware": hardware,
        "commits": commits,
        "python": sorted({str(e.get("python")) for e in envs if e.get("python")}),
        "packages": {k: sorted(v) for k, v in sorted(versions.items())},
        "wall_total_s": sum(walls) if walls else None,
        "wall_max_s": max(walls) if walls else None,
    }


def environment_section(env_paths: Iterable[str | Path], what: str = "runs") -> str:
    """Markdown bullets describing where and with what the runs were produced."""
    env = environment_summary(load_env_files(env_paths))
    if env["n"] == 0:
        return f"No env.json found for these {what}."
    commits = ", ".join(f"`{c}`" + (" (uncommitted changes)" if dirty else "")
                        for c, dirty in env["commits"])
    packages = ", ".join(f"{k} {'/'.join(v)}" for k, v in env["packages"].items())
    lines = [
        f"- Hardware: {'; '.join(env['hardware'])}",
        f"- Code: git commit {commits}",
        f"- Python {', '.join(env['python'])}; {packages}",
        f"- Wall time: {fmt_duration(env['wall_total_s'])} in total over {env['n']} {what} "
        f"(longest {fmt_duration(env['wall_max_s'])})",
    ]
    return "\n".join(lines)


def write_report(path: str | Path, text: str) -> Path:
    """Write the report atomically, with exactly one trailing newline."""
    return atomic_write_text(path, text.rstrip("\n") + "\n")


def claim_lines(paper, rows, numbers: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """A bullet per test of every claim of `paper` (a `normrepro.paper.Paper`), judged on `rows`:
    summary.csv's rows of the claims' metric, indexed by name. `numbers` (`Paper.numbers()`)
    adds the paper's own difference. Returns the lines and each claim's primary verdict."""
    unit = paper.metric.unit
    theirs = {d["name"]: d for d in (numbers or {}).get("diffs", [])}
    lines: list[str] = []
    verdicts: dict[str, str] = {}
    for claim in paper.claims:
        a, b = paper.label(claim.a), paper.label(claim.b)
        if claim.name not in rows.index:
            lines += [f"- **{claim.text}**: not run here (arms {claim.a} and {claim.b} are both "
                      "needed).", ""]
            continue
        d = rows.loc[claim.name]
        n = float(d["n"])
        n_pairs = int(n) if math.isfinite(n) else 0
        p = theirs.get(claim.name)
        paper_text = "n/a" if p is None else fmt_signed(p["diff"]) + (
            f" ± {fmt_num(p['ci_half'])}" if math.isfinite(float(p["ci_half"])) else "")
        note = "".join(
            f" {paper.label(arm)} diverged in {int(rows.loc[arm, 'n_diverged'])} of "
            f"{int(rows.loc[arm, 'n_runs'])} runs (no {paper.metric.label}; counted against "
            "the arm)." for arm in (claim.a, claim.b)
            if arm in rows.index and int(rows.loc[arm, "n_diverged"]))
        for i, test in enumerate(claim.tests):
            category, sentence = judge(paper, claim, test, rows)
            role = "primary" if i == 0 else "secondary"
            lines += [f"- **{test.text}** ({role}, {test.describe(unit)}) — ours: {b} − {a} = "
                      f"**{fmt_signed(d['mean'])} ± {fmt_num(d['ci_half'])}** {unit} (paired over "
                      f"{n_pairs} seeds, 95% CI [{fmt_signed(d['ci_low'])}, "
                      f"{fmt_signed(d['ci_high'])}]; Welch [{fmt_signed(d.get('welch_ci_low'))}, "
                      f"{fmt_signed(d.get('welch_ci_high'))}]); paper: {paper_text}. "
                      f"**{sentence}**.{note if i == 0 else ''}", ""]
            if i == 0:
                verdicts[claim.id] = category
    return lines, verdicts
