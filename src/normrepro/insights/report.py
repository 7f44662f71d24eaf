"""Stage `report`: `results/insights/<profile>/report.md`, one section per question (the index
of every replication's reports, `results/README.md`, is the shared stage `normrepro.stages.index`).

    python -m normrepro.insights.report report --results results/insights/smoke --profile smoke \\
        --out results/insights/smoke/report.md

Every number in the report is read from a file the pipeline wrote under
`results/insights/<profile>/`:

    fluctuation/fluctuation_summary.csv       1. batch statistics vs running statistics
    padding/padding_{bins,batches,training}.csv 2. padding counted or not
    causal/causal.csv                         3. look-ahead of each norm in a causal decoder
    axes/axes.csv, axes/answer.md             4. reduction axes ("is LayerNorm instance norm?")
    ddp/ddp.csv, sync_cost/sync_cost.csv      5. per-worker vs synchronised BN under DDP
    runs/<run>/{config.yaml,record.json,env.json}  the training runs behind 1, 2 and 5

and each section's answer paragraph is composed from those numbers (the wording that compares two
numbers follows their order; nothing is asserted that the files do not show). The command that
regenerates a section uses the arguments recorded in `<stage>/args.txt`, which make also uses.
The index lists the reports of the three replications, linking those that exist.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from normrepro import report as rp
from normrepro.config import load_yaml
from normrepro.errors import cli
from normrepro.io import read_json

FLUCT_LABELS = {"image": "images: ConvNeXt BN", "text": "text: Transformer BN",
                "pnv": "text: Transformer PN-V"}
TEXT_RUNS = ("text-bn", "text-pn_v", "text-bn_unmasked")
DDP_RUNS = {"per-worker BN": "ddp-bn", "synchronised BN": "ddp-bn_sync"}


class MissingResult(FileNotFoundError):
    """A file the report needs is absent; the message names the stage that writes it."""


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise MissingResult(f"{path} not found; it is written by {stage} "
                            "(make replicate-insights runs every stage)")
    return path


def _csv(path: Path, stage: str) -> pd.DataFrame:
    return pd.read_csv(_need(path, stage))


def g3(x) -> str:
    """Three significant digits; exact zero as "0"; n/a for missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    x = float(x)
    return "0" if x == 0 else f"{x:.3g}"


def pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f} %"


def _ratio(a, b) -> float:
    a, b = float(a), float(b)
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def _times(r: float) -> str:
    """'37× larger' / '2.1× smaller' for a ratio a/b."""
    if not math.isfinite(r):
        return "not comparable"
    if r >= 1:
        return f"{r:.3g}× larger"
    return f"{1 / r:.3g}× smaller"


def _args(results: Path, stage: str) -> str:
    path = results / stage / "args.txt"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


def _cmd(module: str, *parts: str) -> str:
    return " ".join(["python -m", module, *[p for p in parts if p]])


def _record(results: Path, run: str) -> dict:
    path = results / "runs" / run / "record.json"
    return read_json(path) if path.is_file() else {}


def _config(results: Path, run: str) -> dict:
    path = results / "runs" / run / "config.yaml"
    return load_yaml(path) if path.is_file() else {}


def _train_cmd(results: Path, run: str) -> str:
    rec = _record(results, run)
    folder = results / "runs" / run
    text = _config(results, run).get("task") == "translation"
    data = f"--data {rec['data']}" if rec.get("data") and text else ""
    return _cmd("normrepro.insights.runs train", f"--config {folder}/config.yaml", f"--out {folder}",
                data)


def _figure(results: Path, stem: str, report_path: Path, alt: str) -> str:
    png = _need(results / f"{stem}.png", f"the stage writing {stem}")
    return rp.figure_line(png, report_path, alt)


# --------------------------------------------------------------------------------------------
# 1. fluctuation

def _fluct_value(summary: pd.DataFrame, label: str, stat: str, col: str) -> float:
    row = summary[(summary["label"] == label) & (summary["statistic"] == stat)]
    return float(row[col].iloc[0]) if len(row) else math.nan


def section_fluctuation(results: Path, report_path: Path) -> tuple[str, str]:
    summary = _csv(results / "fluctuation" / "fluctuation_summary.csv", "normrepro.insights.fluctuation")
    img, txt, pnv = FLUCT_LABELS["image"], FLUCT_LABELS["text"], FLUCT_LABELS["pnv"]
    r = {stat: _ratio(_fluct_value(summary, txt, stat, "median_last_10pct"),
                      _fluct_value(summary, img, stat, "median_last_10pct"))
         for stat in ("mu_dist", "var_dist", "g_mu", "g_var")}
    r_all = {stat: _ratio(_fluct_value(summary, txt, stat, "median"),
                          _fluct_value(summary, img, stat, "median")) for stat in ("mu_dist", "var_dist")}
    table = summary.copy()
    for col in ("median", "mean", "median_first_10pct", "median_last_10pct"):
        table[col] = table[col].map(g3)
    runs = []
    for run, what in (("image-bn", "images"), ("text-bn", "text, BN"), ("text-pn_v", "text, PN-V")):
        rec, cfg = _record(results, run), _config(results, run)
        if not rec or not cfg:
            continue
        layers = ", ".join(cfg["insights"]["record"].get("layers") or ["all BN layers"])
        if cfg.get("task") == "image_classification":
            d = cfg["data"]
            size = (f"{cfg['model']['variant']} on {d['dataset']} ({d.get('train_subset') or 'all'} "
                    f"training images, batch {d['batch_size']}, {rec.get('epochs')} epochs)")
        else:
            m = cfg["model"]
            size = (f"{m['encoder_layers']}+{m['decoder_layers']}-layer d={m['encoder_embed_dim']} "
                    f"transformer on {rec.get('data')} ({rec.get('steps')} updates of ≤ "
                    f"{cfg['data']['max_tokens']} tokens)")
        runs.append(f"- `{run}` ({what}): {size}; recorded layer `{layers}` every "
                    f"{cfg['insights']['record'].get('every_n_steps', 1)} step(s).")
    mu_word = "farther from" if r["mu_dist"] >= 1 else "closer to"
    var_word = "farther from" if r["var_dist"] >= 1 else "closer to"
    both = r["mu_dist"] > 1 and r["var_dist"] > 1
    answer = (
        f"In the last 10 % of training the text BN layer's batch mean is {_times(r['mu_dist'])} "
        f"({mu_word} its running mean) than the image BN layer's, and its batch variance "
        f"{_times(r['var_dist'])} ({var_word} its running variance); over the whole run the "
        f"medians are {_times(r_all['mu_dist'])} and {_times(r_all['var_dist'])}. The "
        f"gradients through the batch statistics are {_times(r['g_mu'])} (g_μ) and "
        f"{_times(r['g_var'])} (g_σ²) on text. "
        + ("This is the PowerNorm paper's observation: on text the statistics BN normalises with "
           "during training are far from the running statistics it uses at inference, and they "
           "jump from batch to batch, while on images they stay close."
           if both else
           "At this scale the measurement does not show the paper's gap in both statistics; see the "
           "figure for how it evolves over training.")
        + " The distances are in the units of each layer's input (the PowerNorm paper's (1/d)‖·‖),"
        " and the first ~20 steps also show the running statistics catching up from their"
        " initial values (momentum 0.1), hence the last-10 % column.")
    if not math.isnan(_fluct_value(summary, pnv, "psi_dist", "median")):
        answer += (f" PN-V's quadratic mean ψ²_B stays at (1/d)‖ψ²_B − ψ²‖ = "
                   f"{g3(_fluct_value(summary, pnv, 'psi_dist', 'median_last_10pct'))} in the last 10 %"
                   f" (text BN's σ²: {g3(_fluct_value(summary, txt, 'var_dist', 'median_last_10pct'))}).")
    cmds = [_train_cmd(results, run) for run in ("image-bn", "text-bn", "text-pn_v")]
    cmds.append(_cmd("normrepro.insights.fluctuation",
                     *[f'--csv "{FLUCT_LABELS[k]}={results}/runs/{run}/batch_stats.csv"'
                       for k, run in (("image", "image-bn"), ("text", "text-bn"), ("pnv", "text-pn_v"))],
                     f"--out {results}/fluctuation"))
    text = "\n\n".join([
        "## 1. Do batch statistics fluctuate more on text than on images?",
        _figure(results, "fluctuation/fluctuation", report_path,
                "batch vs running statistics over training, images vs text"),
        "\n".join(runs) if runs else "The run folders are not available; see the regeneration "
        "commands below.",
        rp.markdown_table(table, {"label": "run", "statistic": "statistic", "steps": "steps",
                                  "median": "median", "median_first_10pct": "median, first 10 %",
                                  "median_last_10pct": "median, last 10 %"}),
        f"**Answer.** {answer}",
        rp.regenerate_block(cmds),
    ])
    line = (f"text/image batch-vs-running distance, last 10 %: mean {_times(r['mu_dist'])}, "
            f"variance {_times(r['var_dist'])}")
    return text, line


# --------------------------------------------------------------------------------------------
# 2. padding

def section_padding(results: Path, report_path: Path) -> tuple[str, str]:
    d = results / "padding"
    bins = _csv(d / "padding_bins.csv", "normrepro.insights.padding")
    batches = _csv(d / "padding_batches.csv", "normrepro.insights.padding")
    training = _csv(d / "padding_training.csv", "normrepro.insights.padding")
    first = bins[bins["norm_index"] == 0].sort_values("bin_lo")
    first_layer = first["layer"].iloc[0] if len(first) else "?"
    fb = batches[batches["norm_index"] == 0]
    kinds = {k: fb[fb["kind"] == k] for k in ("bucketed", "random")}
    pad = {k: float(v["pad_frac"].mean()) if len(v) else math.nan for k, v in kinds.items()}
    shift = {k: float(v["mu_shift_sd"].median()) if len(v) else math.nan for k, v in kinds.items()}
    varc = {k: float(v["var_rel_change"].median()) if len(v) else math.nan for k, v in kinds.items()}
    outc = {k: float(v["out_change"].median()) if len(v) else math.nan for k, v in kinds.items()}
    lo, hi = first.iloc[0], first.iloc[-1]
    table = first[["bin_lo", "bin_hi", "n_bucketed", "n_random", "pad_frac_mean", "mu_shift_sd",
                   "var_rel_change", "out_change"]].copy()
    table.insert(0, "padding", [f"[{a:.0%}, {b:.0%})" for a, b in zip(table["bin_lo"], table["bin_hi"])])
    table = table.drop(columns=["bin_lo", "bin_hi"])
    for col in ("mu_shift_sd", "var_rel_change", "out_change"):
        table[col] = table[col].map(g3)
    table["pad_frac_mean"] = table["pad_frac_mean"].map(pct)
    masked = training[training["encoder_norm"] == "batch"]
    unmasked = training[training["encoder_norm"] != "batch"]
    train_text = ""
    if len(masked) and len(unmasked):
        m, u = masked.iloc[0], unmasked.iloc[0]
        diff = float(u["last_val_loss"]) - float(m["last_val_loss"])
        word = "higher" if diff > 0 else "lower" if diff < 0 else "the same as"
        bleu = ""
        if int(m.get("val_bleu_sentences", 0) or 0) > 0:
            bleu = (f"; greedy BLEU on {int(m['val_bleu_sentences'])} validation sentences "
                    f"{g3(u['last_val_bleu'])} vs {g3(m['last_val_bleu'])}")
        train_text = (f" Trained for {int(m['updates'])} updates with otherwise identical settings, "
                      f"the unmasked-BN model ends at validation loss {u['last_val_loss']:.3f} bits/token, "
                      f"{abs(diff):.3g} {word} than masked BN ({m['last_val_loss']:.3f}){bleu}; one seed "
                      "each, so a small difference is within seed-to-seed noise.")
    rho = float(fb["pad_frac"].corr(fb["mu_shift_sd"], method="spearman")) if len(fb) > 2 else math.nan
    if math.isfinite(rho) and rho > 0.5:
        trend = (f"Counting padding moves the statistics further the more padding a batch has "
                 f"(Spearman ρ = {rho:.2f} between padding fraction and mean shift over {len(fb)} "
                 "batches).")
    else:
        trend = (f"The shift does not grow consistently with the padding fraction here (Spearman "
                 f"ρ = {rho:.2f} over {len(fb)} batches).")
    answer = (
        f"{trend} At the first encoder norm (`{first_layer}`) batches with {pct(lo['pad_frac_mean'])} "
        f"padding move the mean by {g3(lo['mu_shift_sd'])} σ and the variance by "
        f"{pct(lo['var_rel_change'])}, while batches with {pct(hi['pad_frac_mean'])} padding move them "
        f"by {g3(hi['mu_shift_sd'])} σ and {pct(hi['var_rel_change'])}, changing the normalised output "
        f"at real tokens by {pct(hi['out_change'])}. Fairseq's length-bucketed batches carry "
        f"{pct(pad['bucketed'])} padding on average (median mean shift {g3(shift['bucketed'])} σ, "
        f"variance {pct(varc['bucketed'])}, output {pct(outc['bucketed'])}); the same sentences grouped "
        f"at random carry {pct(pad['random'])} (median shift {g3(shift['random'])} σ, variance "
        f"{pct(varc['random'])}, output {pct(outc['random'])}). Masking removes the effect exactly "
        "(padding never enters `batch`'s statistics)"
        + (f", and bucketing by length keeps it {_ratio(shift['random'], shift['bucketed']):.3g}× "
           "smaller than random grouping." if shift["bucketed"] < shift["random"] else ".")
        + train_text)
    tr = training.copy()
    cmds = [_train_cmd(results, "text-bn"), _train_cmd(results, "text-bn_unmasked"),
            _cmd("normrepro.insights.padding", f"--masked-run {results}/runs/text-bn",
                 f"--unmasked-run {results}/runs/text-bn_unmasked",
                 f"--data {_record(results, 'text-bn').get('data', 'DATA')}", f"--out {d}",
                 _args(results, "padding"))]
    text = "\n\n".join([
        "## 2. Padding and variable length: what does counting padding do to BatchNorm?",
        "Unmasked BN (`batch_unmasked`, in the registry, `normrepro.norms.batch`) is the registry's "
        "masked `batch` with the mask ignored: its statistics run over all T×B positions, padding "
        "included. Each point of the first three panels is one training batch passed through the "
        "encoder of the trained masked-BN model; the statistics of each encoder norm's input are "
        "computed over the real tokens and over all positions.",
        _figure(results, "padding/padding", report_path, "statistics vs padding fraction; training curves"),
        f"First encoder norm, medians per padding bin ({len(fb)} batches, of which "
        f"{len(kinds['bucketed'])} length-bucketed and {len(kinds['random'])} random):",
        rp.markdown_table(table, {"padding": "padding", "n_bucketed": "bucketed batches",
                                  "n_random": "random batches", "pad_frac_mean": "mean padding",
                                  "mu_shift_sd": "mean shift (σ)", "var_rel_change": "variance change",
                                  "out_change": "output change"}),
        rp.markdown_table(tr, {"run": "run", "updates": "updates", "best_val_loss": "best val loss",
                               "last_val_loss": "last val loss", "last_val_bleu": "last val BLEU (greedy)"},
                          digits=3),
        f"**Answer.** {answer}",
        rp.regenerate_block(cmds),
    ])
    line = (f"padding {pct(pad['bucketed'])} (bucketed) / {pct(pad['random'])} (random): mean shift "
            f"{g3(shift['bucketed'])} σ / {g3(shift['random'])} σ")
    return text, line


# --------------------------------------------------------------------------------------------
# 3. causal leakage

LEAK_METRICS = {"fwd_change": "forward change", "grad_future": "gradient to future",
                "bwd_change": "backward change", "train_eval": "train vs eval",
                "train_vs_generation": "train vs generation"}


def section_causal(results: Path, report_path: Path) -> tuple[str, str]:
    df = _csv(results / "causal" / "causal.csv", "normrepro.insights.causal")
    level = "decoder" if (df["level"] == "decoder").any() else df["level"].iloc[0]
    dec = df[df["level"] == level].copy()
    leak_cols = ["fwd_change", "grad_future", "bwd_change"]
    zero = [c for c, v in zip(dec["case"], (dec[leak_cols] == 0).all(axis=1)) if v]
    leaky = [c for c in dec["case"] if c not in zero]
    fwd_only_zero = [c for c, f, g in zip(dec["case"], dec["fwd_change"], dec["grad_future"])
                     if f == 0 and g > 0]
    table = dec[["case", *LEAK_METRICS]].copy()
    for col in LEAK_METRICS:
        table[col] = table[col].map(g3)
    worst = dec.loc[dec["fwd_change"].idxmax()] if len(dec) else None
    if worst is not None and not worst["fwd_change"] > 0:
        worst = None
    answer = (
        f"In a causal {level} in training mode, the output at position t does not depend on later "
        f"positions at all, forward or backward, with {', '.join(f'`{c}`' for c in zero) or 'no norm'}: "
        "all three leakage metrics are exactly 0 (float64, no tolerance). "
        f"With {', '.join(f'`{c}`' for c in leaky) or 'none'} it does"
        + (f": redrawing the future tokens changes the past outputs by up to "
           f"{g3(worst['fwd_change'])} (relative, `{worst['case']}`)" if worst is not None else "")
        + ", because their statistics are computed over the sequence (and batch) axis, which "
        "includes the positions a decoder must not see.")
    if fwd_only_zero:
        answer += (f" {', '.join(f'`{c}`' for c in fwd_only_zero)}: the forward pass uses running "
                   "statistics only, yet gradients still reach future positions through the batch "
                   "statistics of its backward pass.")
    mism = dec[dec["train_vs_generation"] > 1e-12]
    if len(mism):
        answer += (" The same norms make training and generation disagree: the output at t during "
                   "training differs from what incremental generation computes from the prefix by "
                   + ", ".join(f"{g3(v)} (`{c}`)" for c, v in zip(mism["case"], mism["train_vs_generation"]))
                   + ".")
    text = "\n\n".join([
        "## 3. Causal leakage: does the norm let position t see positions > t?",
        _figure(results, "causal/causal", report_path, "causal leakage heat maps"),
        f"Means over positions t of a 2-layer pre-norm causal decoder (`{level}` rows of causal.csv; "
        "the `norm` rows test the layer alone). Forward change: relative change of the outputs at ≤ t "
        "when the inputs at > t are redrawn; gradient to future: gradient of a loss on y_t reaching "
        "x_>t, relative to x_≤t; backward change: change of the gradient reaching x_≤t when x_>t is "
        "redrawn; train vs eval / generation: batch vs running statistics.",
        rp.markdown_table(table, {"case": "norm", **LEAK_METRICS}),
        f"**Answer.** {answer}",
        rp.regenerate_block([_cmd("normrepro.insights.causal", f"--out {results}/causal",
                                  _args(results, "causal"))]),
    ])
    line = f"exactly 0 for {', '.join(zero) or 'none'}; > 0 for {', '.join(leaky) or 'none'}"
    return text, line


# --------------------------------------------------------------------------------------------
# 4. axes

def section_axes(results: Path, report_path: Path) -> tuple[str, str]:
    df = _csv(results / "axes" / "axes.csv", "normrepro.insights.axes")
    answer_md = _need(results / "axes" / "answer.md", "normrepro.insights.axes").read_text(encoding="utf-8")
    body = "\n".join(l for l in answer_md.splitlines() if not l.startswith("# ")).strip()
    table = df[["norm", "layout", "reduced_over", "one_statistic_per"]].fillna("")
    verdict = body.split("**")[1].rstrip(".") if body.count("**") >= 2 else "see below"
    text = "\n\n".join([
        "## 4. Which axes does each norm reduce over? Is transformer LayerNorm instance norm?",
        _figure(results, "axes/cubes", report_path, "normalisation cubes"),
        "Measured, not declared: one input element is perturbed in training mode and the outputs "
        "that change are the ones sharing its statistic.",
        rp.markdown_table(table, {"norm": "norm", "layout": "layout", "reduced_over": "statistics over",
                                  "one_statistic_per": "one statistic per"}),
        f"**Answer.** {body}",
        rp.regenerate_block([_cmd("normrepro.insights.axes", f"--out {results}/axes",
                                  _args(results, "axes"))]),
    ])
    return text, f"transformer LayerNorm is instance norm? {verdict}"


# --------------------------------------------------------------------------------------------
# 5. DDP

def section_ddp(results: Path, report_path: Path) -> tuple[str, str]:
    ddp = _csv(results / "ddp" / "ddp.csv", "normrepro.insights.ddp")
    cost = _csv(results / "sync_cost" / "sync_cost.csv", "normrepro.insights.sync_cost")
    by = {row["norm"]: row for _, row in ddp.iterrows()}
    pw, sy = by.get("batch2d"), by.get("sync_batch2d")
    img = cost[cost["norm"] == "sync_batch2d"]
    c = img.iloc[0] if len(img) else cost.iloc[0]
    table = ddp[["run", "norm", "world_size", "batch_per_worker", "effective_batch", "epochs",
                 "test_top1", "val_top1", "train_images_per_s", "worker_mu_shift_sd",
                 "worker_var_rel_change"]].copy()
    for col in ("worker_mu_shift_sd", "worker_var_rel_change"):
        table[col] = table[col].map(g3)
    ctable = cost[["case", "collectives_per_step", "floats_per_step", "plain_ms", "sync_ms",
                   "overhead_ms", "overhead_pct", "allreduce_ms"]]
    answer = ""
    if pw is not None:
        answer += (f"With {int(pw['world_size'])} workers of {int(pw['batch_per_worker'])} images each, "
                   f"the statistics a worker normalises with differ from those of the global batch by "
                   f"{g3(pw['worker_mu_shift_sd'])} σ in the mean and {pct(pw['worker_var_rel_change'])} "
                   "in the variance (mean over BN layers, recorded steps and workers): per-worker BN is "
                   "BN with a smaller batch, as Goyal et al. (2017) treat it. ")
    if pw is not None and sy is not None:
        diff = float(sy["test_top1"]) - float(pw["test_top1"])
        answer += (f"Synchronising them changed test top-1 from {pw['test_top1']:.2f} % to "
                   f"{sy['test_top1']:.2f} % ({diff:+.2f} points, one seed each) and DDP training "
                   f"throughput from {pw['train_images_per_s']:.0f} to {sy['train_images_per_s']:.0f} "
                   "images/s (the synchronised layer also runs an eager BN instead of torch's fused "
                   "kernel, so this includes more than communication). ")
    answer += (f"The communication itself: {int(c['collectives_per_step'])} extra all-reduces per BN "
               f"layer per training step ({int(c['floats_per_step'])} floats for {c['case']}), which "
               f"cost {c['overhead_ms']:.2f} ms per layer per step here ({c['overhead_pct']:.0f} % over "
               f"the same code without synchronisation); the bare all-reduces take "
               f"{c['allreduce_ms']:.2f} ms. They are latency-bound round trips every layer waits for, "
               "which is why BN is awkward to parallelise and LayerNorm, with per-token statistics, "
               "needs no communication at all.")
    cmds = [_train_cmd(results, run) for run in DDP_RUNS.values()]
    cmds += [_cmd("normrepro.tasks.image_classification.evaluate", f"--run {results}/runs/{run}") for run in DDP_RUNS.values()]
    cmds += [_cmd("normrepro.insights.sync_cost", f"--out {results}/sync_cost", _args(results, "sync_cost")),
             _cmd("normrepro.insights.ddp",
                  *[f'--run "{label}={results}/runs/{run}"' for label, run in DDP_RUNS.items()],
                  f"--sync-cost {results}/sync_cost/sync_cost.csv", f"--out {results}/ddp")]
    text = "\n\n".join([
        "## 5. BatchNorm under data parallelism: per-worker or synchronised statistics?",
        _figure(results, "ddp/ddp", report_path, "per-worker vs synchronised BN under DDP"),
        rp.markdown_table(table, {"run": "run", "norm": "norm", "world_size": "workers",
                                  "batch_per_worker": "batch/worker", "effective_batch": "global batch",
                                  "epochs": "epochs", "test_top1": "test top-1", "val_top1": "val top-1",
                                  "train_images_per_s": "images/s",
                                  "worker_mu_shift_sd": "worker mean shift (σ)",
                                  "worker_var_rel_change": "worker variance change"}),
        _figure(results, "sync_cost/sync_cost", report_path, "cost of synchronised BN per layer"),
        rp.markdown_table(ctable, {"case": "case", "collectives_per_step": "all-reduces/step",
                                   "floats_per_step": "floats/step", "plain_ms": "per-worker BN (ms)",
                                   "sync_ms": "sync BN (ms)", "overhead_ms": "overhead (ms)",
                                   "overhead_pct": "overhead (%)", "allreduce_ms": "bare all-reduces (ms)"}),
        f"**Answer.** {answer}",
        rp.regenerate_block(cmds),
    ])
    line = (f"per-worker statistics off by {g3(pw['worker_mu_shift_sd']) if pw is not None else 'n/a'} σ; "
            f"sync costs {int(c['collectives_per_step'])} all-reduces/layer/step "
            f"(+{c['overhead_ms']:.2f} ms)")
    return text, line


# --------------------------------------------------------------------------------------------

SECTIONS = (("Batch statistics fluctuate on text", section_fluctuation),
            ("Padding pollutes unmasked statistics", section_padding),
            ("BN leaks the future into a causal decoder", section_causal),
            ("Transformer LayerNorm is instance norm", section_axes),
            ("BN needs synchronisation under data parallelism", section_ddp))


def build_report(results: str | Path, report_path: str | Path, profile: str | None = None) -> str:
    results, report_path = Path(results), Path(report_path)
    parts, lines = [], []
    for claim, fn in SECTIONS:
        text, line = fn(results, report_path)
        parts.append(text)
        lines.append({"claim": claim, "measured": line})
    envs = sorted((results / "runs").glob("*/env.json"))
    prof = f" with `PROFILE={profile}`" if profile else ""
    head = [
        "# Why do transformers use LayerNorm rather than BatchNorm? Five answers, each measured",
        f"_Generated by `python -m normrepro.insights.report` from `{results}/`{prof}; do not edit "
        "by hand._",
        "The usual answers, each turned into an experiment on this package's two replications "
        "(ConvNeXt on Fashion-MNIST, the fairseq transformer on the Bible De-En corpus) and its norm "
        "registry. The training runs are arms of those replications, trained by their own code with "
        "a recorder attached (`normrepro.insights.runs`, configs in `replications/insights/`).",
        rp.markdown_table(lines, {"claim": "common answer", "measured": "measured here"}),
    ]
    tail = [
        "## Environment",
        rp.environment_section(envs, what="training runs") if envs else "No run env.json found.",
        "## Regenerate everything",
        rp.regenerate_block([f"make replicate-insights PROFILE={profile or 'auto'}"],
                            "`make` redoes only stale stages; delete a stage's folder under "
                            f"`{results}/` to redo it."),
    ]
    return "\n\n".join(head + parts + tail)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.insights.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("report", help="write results/insights/<profile>/report.md")
    p.add_argument("--results", required=True, type=Path, help="results/insights/<profile>")
    p.add_argument("--profile", help="the profile the results were made with (for the commands)")
    p.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        text = build_report(args.results, args.out, args.profile)
    except MissingResult as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rp.write_report(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
