"""Figures shared by the replications: learning curves, final metric per arm, ours vs paper.

Every function takes tidy pandas tables (one row per observation), draws with seaborn and saves
the figure twice, `<out_stem>.png` and `<out_stem>.pdf`, each written atomically (temp file, then
rename) so a report never links to a half-written image. Nothing here knows which replication
it draws; column names are arguments.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from normrepro import stats  # noqa: E402
from normrepro.io import atomic_path  # noqa: E402

FORMATS = ("png", "pdf")


def save_figure(fig: plt.Figure, out_stem: str | Path, dpi: int = 150) -> list[Path]:
    """Save `fig` as PNG and PDF next to each other (atomically) and close it."""
    out_stem = Path(out_stem)
    paths = []
    for fmt in FORMATS:
        path = out_stem.with_name(out_stem.name + "." + fmt)
        # The temp name ends in .tmp, so the format must be given explicitly. Fixed metadata keeps
        # regenerated PDFs byte-identical when the data did not change.
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(path, suffix="." + fmt) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def _order(values: pd.Series, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(values.dropna()))
    if order is None:
        return sorted(present)
    return [o for o in order if o in present] + sorted(set(present) - set(order))


def learning_curves(df: pd.DataFrame, x: str, y: str | Sequence[str], hue: str,
                    out_stem: str | Path, *, hue_order: Sequence[str] | None = None,
                    labels: dict[str, str] | None = None, title: str | None = None,
                    band: str = "sd") -> list[Path]:
    """One panel per column in `y`: the mean over seeds per `hue` value, with a shaded band.

    `band` is seaborn's errorbar spec: "sd" (default; with 3 seeds a bootstrap CI is not
    meaningful, the spread of the seeds is) or e.g. ("ci", 95). Columns that are entirely NaN
    (e.g. validation metrics of a run without a validation split) are skipped.
    """
    ys = [y] if isinstance(y, str) else list(y)
    ys = [c for c in ys if c in df.columns and df[c].notna().any()]
    if not ys:
        raise ValueError(f"learning_curves: none of the columns {y!r} has data to plot")
    labels = labels or {}
    order = _order(df[hue], hue_order)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.4), squeeze=False)
    for ax, col in zip(axes[0], ys):
        sns.lineplot(data=df, x=x, y=col, hue=hue, hue_order=order, errorbar=band, marker="o",
                     markersize=3, ax=ax)
        ax.set_xlabel(labels.get(x, x))
        ax.set_ylabel(labels.get(col, col))
        if pd.api.types.is_integer_dtype(df[x]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5"
        ax.grid(alpha=0.3)
        if ax is not axes[0][0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def final_per_arm(runs: pd.DataFrame, metric: str, out_stem: str | Path, *, arm_col: str = "arm",
                  status_col: str = "status", order: Sequence[str] | None = None,
                  ylabel: str | None = None, title: str | None = None) -> list[Path]:
    """Each seed as a dot, the arm's mean as a bar-free marker with its Student-t 95% CI.

    The interval is `normrepro.stats.summarize`'s, the same one summary.csv and the report
    print (seaborn's bootstrap interval would disagree with the table for 3 seeds). A diverged
    run has no value to draw, so the x tick label says e.g. "bn (1 diverged)": the figure must
    not look like a complete set of seeds when it is not.
    """
    order = _order(runs[arm_col], order)
    values = runs[metric].astype(float)
    finite = runs[np.isfinite(values)]
    tick_labels = []
    for arm in order:
        sub = runs[runs[arm_col] == arm]
        bad = sub[status_col][sub[status_col] != "ok"].value_counts()
        extra = ", ".join(f"{n} {s}" for s, n in sorted(bad.items()))
        tick_labels.append(f"{arm}\n({extra})" if extra else arm)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(order), 3.6))
    palette = sns.color_palette()
    for i, arm in enumerate(order):
        vals = finite[finite[arm_col] == arm][metric].astype(float).to_numpy()
        if vals.size == 0:
            continue
        jitter = np.linspace(-0.12, 0.12, vals.size) if vals.size > 1 else np.zeros(1)
        ax.scatter(i - 0.15 + jitter, vals, color="black", s=22, zorder=3,
                   label="seed" if i == 0 else None)
        s = stats.summarize(vals)
        half = s["ci_half"] if math.isfinite(s["ci_half"]) else 0.0
        ax.errorbar([i + 0.15], [s["mean"]], yerr=[half], fmt="D", color=palette[i % len(palette)],
                    capsize=6, markersize=7, zorder=4,
                    label="mean ± 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(tick_labels)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel(ylabel or metric)
    ax.grid(axis="y", alpha=0.3)
    if not finite.empty:
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def _errorbars(ax: plt.Axes, table: pd.DataFrame, color: str, label: str | None = None) -> None:
    x = np.arange(len(table))
    half = table["ci_half"].astype(float).fillna(0.0).to_numpy()
    ax.errorbar(x, table["mean"].astype(float), yerr=half, fmt="o", color=color, capsize=5,
                markersize=7, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(table["name"])
    ax.grid(axis="y", alpha=0.3)


def ours_vs_paper(ours: pd.DataFrame, paper: pd.DataFrame, out_stem: str | Path, *,
                  diffs: pd.DataFrame | None = None, ylabel: str = "top-1 (%)",
                  ours_title: str = "ours", paper_title: str = "paper",
                  diff_label: str = "difference (points)") -> list[Path]:
    """Side by side: our arms, the paper's arms and, optionally, the between-arm differences.

    `ours` and `paper` have columns name, mean, ci_half (NaN half → no error bar). Their
    absolute values are on different datasets, so each gets its own y axis; `diffs` (columns
    source, name, mean, ci_half) puts the comparable quantity, the effect of the swap, on one
    axis with a zero line.
    """
    panels = 3 if diffs is not None and not diffs.empty else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.5))
    palette = sns.color_palette()
    for ax, table, title, color in ((axes[0], ours, ours_title, palette[0]),
                                    (axes[1], paper, paper_title, palette[1])):
        _errorbars(ax, table.reset_index(drop=True), color)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.margins(x=0.4)
    if panels == 3:
        ax = axes[2]
        sources = list(dict.fromkeys(diffs["source"]))
        x = np.arange(len(diffs))
        for i, (_, row) in enumerate(diffs.reset_index(drop=True).iterrows()):
            half = float(row["ci_half"]) if math.isfinite(float(row["ci_half"])) else 0.0
            ax.errorbar([i], [float(row["mean"])], yerr=[half], fmt="o", capsize=5, markersize=7,
                        color=palette[sources.index(row["source"]) % len(palette)])
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r.source}\n{r.name}" for r in diffs.itertuples()])
        ax.axhline(0.0, color="gray", lw=1, ls="--")
        ax.set_ylabel(diff_label)
        ax.set_title("effect of the swap")
        ax.grid(axis="y", alpha=0.3)
        ax.margins(x=0.3)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def ours_vs_paper_of_claims(summary: pd.DataFrame, paper, order: Sequence[str],
                            out_stem: str | Path, *, ours_title: str = "ours") -> list[Path]:
    """`ours_vs_paper` for a replication's paper.yaml (a `normrepro.paper.Paper`): our arms'
    mean ± 95% CI of the claims' metric from summary.csv (in `order`), the paper's numbers of its
    `primary` results, and each claim's `b - a` of both."""
    rows = summary[summary["metric"] == paper.metric.name]
    ours = rows[rows["kind"] == "arm"][["name", "mean", "ci_half"]]
    ours = ours.set_index("name").reindex([a for a in order if a in set(ours["name"])])
    numbers = paper.numbers()
    theirs = pd.DataFrame(numbers["arms"], columns=["name", "mean", "ci_half"])
    paper_diffs = {d["name"]: d for d in numbers["diffs"]}
    diffs = []
    for claim in paper.claims:
        row = rows[(rows["kind"] == "diff") & (rows["name"] == claim.name)]
        if len(row):
            diffs.append({"source": "ours", "name": claim.name, "mean": float(row["mean"].iloc[0]),
                          "ci_half": float(row["ci_half"].iloc[0])})
        if claim.name in paper_diffs:
            d = paper_diffs[claim.name]
            diffs.append({"source": "paper", "name": claim.name, "mean": d["diff"],
                          "ci_half": d["ci_half"]})
    return ours_vs_paper(ours.reset_index(), theirs, out_stem, diffs=pd.DataFrame(diffs),
                         ylabel=paper.metric.label, ours_title=ours_title,
                         paper_title=f"paper: {numbers['label']}",
                         diff_label=f"difference ({paper.metric.unit}), 95% CI")
