"""Stage `report`: `results/convnext/report.md` from the files under results/ and paper.yaml.

    python -m normrepro.convnext.report --results results/convnext --datasets fashion-mnist \
        --paper replications/convnext/paper.yaml --out results/convnext/report.md

Every number in the report is read from a file: the paper's from paper.yaml; ours from
`<dataset>/summary.csv`, `<dataset>/runs.csv` and each run's config.yaml, env.json, final.json.
One section per data set given (the Makefile passes the one it just ran).

Verdict rule (stated in the report too). Let d = mean(LN) - mean(BN) in test top-1 points and
[lo, hi] its Welch 95% interval; m = `report.equivalence_margin` of the run config (0.5 points).
The paper's claim "LN does not hurt" is read as "LN is not worse by more than m":
  fewer than 2 finished seeds in an arm -> inconclusive (no interval)
  lo > 0                                 -> consistent: LN better
  lo >= -m                               -> consistent: LN at most m points worse
                                            (noted when hi < 0: slightly but measurably worse)
  hi < -m                                -> inconsistent: LN worse by more than m
  lo < -m and hi < 0                     -> inconsistent: LN worse (interval excludes 0)
  otherwise (lo < -m <= 0 <= hi)         -> inconclusive: more seeds needed
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from normrepro import report as rp
from normrepro.config import ConfigError, load_yaml
from normrepro.convnext.metrics import METRIC_COLUMNS
from normrepro.convnext.paper import load_paper, regime_table
from normrepro.convnext.plot import figure_paths
from normrepro.io import read_json
from normrepro.stats import format_pm
from normrepro.summary import SUMMARY_COLUMNS, read_summary, resolve_run_dirs

RUNS_COLUMNS = {
    "arm": "arm name (bn, ln)",
    "seed": "training seed (initialisation, data order, augmentation, stochastic depth)",
    "status": "`ok`, `diverged` (training loss became NaN/inf) or `missing` (no final.json)",
    "test_top1": "top-1 accuracy (%) on the test split after the last epoch",
    "test_top5": "top-5 accuracy (%) on the same images",
    "run_dir": "the run's folder, relative to the data set's results folder",
}
METRICS_DOC = {
    "epoch": "epochs completed", "step": "optimizer steps so far",
    "train_loss": "mean training loss of the epoch (with label smoothing / mixup targets)",
    "val_loss": "cross-entropy on the held-out images", "val_top1": "held-out top-1 (%)",
    "val_top5": "held-out top-5 (%)", "lr": "learning rate after the epoch's last step",
    "epoch_time_s": "wall time of the epoch incl. validation",
    "train_time_s": "wall time of the epoch's training batches",
    "train_images_per_s": "training throughput of the epoch",
}
assert set(METRICS_DOC) == set(METRIC_COLUMNS), "document every metrics.csv column"


def verdict(diff: float, lo: float, hi: float, margin: float, n_a: int, n_b: int) -> tuple[str, str]:
    """(category, sentence) by the rule in this module's docstring."""
    if n_a < 2 or n_b < 2 or not all(math.isfinite(v) for v in (diff, lo, hi)):
        return "inconclusive", ("inconclusive: an interval needs at least 2 finished seeds per "
                                f"arm (have BN {n_a}, LN {n_b})")
    m = f"{margin:g}"
    if lo > 0:
        return "consistent", "consistent with the paper's 'LN does not hurt': LN is better"
    if lo >= -margin:
        extra = (" (LN is slightly but measurably worse: the interval excludes 0)" if hi < 0
                 else "")
        return "consistent", (f"consistent with the paper's 'LN does not hurt': LN is at most "
                              f"{m} points worse at 95% confidence{extra}")
    if hi < -margin:
        return "inconsistent", f"inconsistent with the paper: LN is worse by more than {m} points"
    if hi < 0:
        return "inconsistent", ("inconsistent with the paper: LN is worse (the interval excludes 0"
                                f" and reaches beyond -{m} points)")
    return "inconclusive", (f"inconclusive: the interval contains both 0 and losses larger than "
                            f"{m} points; more seeds would narrow it")


def _signed(x: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.{digits}f}"


def _lr_text(lr) -> str:
    return f"{float(lr):.3g}" if isinstance(lr, (int, float)) else "n/a"


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _load_runs(ds_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    summary = read_summary(ds_dir / "summary.csv")
    runs = pd.read_csv(ds_dir / "runs.csv")
    details = []
    for run_dir, row in zip(resolve_run_dirs(runs, ds_dir), runs.to_dict("records")):
        d = {"row": row, "dir": run_dir}
        for name in ("config.yaml", "env.json", "final.json"):
            path = run_dir / name
            if path.is_file():
                d[name] = load_yaml(path) if name.endswith(".yaml") else read_json(path)
        details.append(d)
    return summary, runs, details


def _augment_text(aug: dict) -> str:
    parts = []
    crop = aug.get("crop", "random_crop")
    parts.append(f"random crop (pad {aug.get('crop_padding', 0)})" if crop == "random_crop"
                 else f"random resized crop (scale {aug.get('rrc_scale')})")
    if aug.get("hflip"):
        parts.append(f"horizontal flip p={aug['hflip']}")
    if aug.get("rand_augment"):
        parts.append(f"RandAugment `{aug['rand_augment']}`")
    if aug.get("mixup"):
        parts.append(f"Mixup {aug['mixup']}")
    if aug.get("cutmix"):
        parts.append(f"CutMix {aug['cutmix']}")
    if aug.get("random_erasing"):
        parts.append(f"random erasing {aug['random_erasing']}")
    return ", ".join(parts)


def _deviations(paper: dict, cfg: dict, train_rec: dict, split_sizes: dict) -> list[str]:
    out = []
    ours_values = {"effective_batch": train_rec.get("effective_batch")}
    for key, theirs in (paper.get("setup") or {}).items():
        ours = ours_values[key] if key in ours_values else _get(cfg, key)
        if ours != theirs:
            out.append(f"`{key}`: paper {theirs!r}, ours {ours!r}")
    if cfg["data"].get("train_subset"):
        out.append(f"we train on a fixed subset of {split_sizes.get('train')} training images "
                   f"(identical for every run), not the full training split")
    if int(cfg["data"].get("val_size", 0)) > 0:
        out.append(f"{cfg['data']['val_size']} training images are held out for validation "
                   "curves; the paper trained on all of them")
    out += [str(n) for n in (paper.get("notes") or [])]
    return out


def dataset_section(ds_dir: Path, paper: dict, report_path: Path, figures_dir: Path) -> tuple[str, dict]:
    dataset = ds_dir.name
    summary, runs, details = _load_runs(ds_dir)
    configs = [d["config.yaml"] for d in details if "config.yaml" in d]
    if not configs:
        raise FileNotFoundError(f"no run config under {ds_dir}; run the pipeline first")
    cfg = configs[0]
    envs = [d["env.json"] for d in details if "env.json" in d]
    finals = [d["final.json"] for d in details if "final.json" in d]
    train_rec = envs[0].get("train", {}) if envs else {}
    split_sizes = train_rec.get("split_sizes", {})
    params = sorted({f["parameters"] for f in finals if f.get("parameters")})
    n_test = sorted({f["n_test"] for f in finals if f.get("n_test")})
    test_split = next((f["test_split"] for f in finals if f.get("test_split")), "test")
    margin = float(_get(cfg, "report.equivalence_margin") or 0.5)
    seeds = {arm: sorted(runs[runs["arm"] == arm]["seed"].tolist()) for arm in runs["arm"].unique()}

    arm_norms = {d["row"]["arm"]: d["config.yaml"]["model"]["norm"] for d in details
                 if "config.yaml" in d}
    lines = [f"## {dataset}", ""]
    # ---- setting
    model = cfg["model"]
    train_times = {}
    for d in details:
        t = (d.get("env.json") or {}).get("train", {}).get("train_time_s")
        if isinstance(t, (int, float)):
            train_times.setdefault(d["row"]["arm"], []).append(t)
    lines += [
        "### Our setting", "",
        f"- **Data**: {dataset}, {split_sizes.get('train', 'n/a')} training images, "
        f"{split_sizes.get('val', 0)} held out for validation curves (split seed "
        f"{cfg['data'].get('split_seed', 0)}, identical for all runs); accuracy is measured on "
        f"{', '.join(map(str, n_test)) or 'n/a'} images of the `{test_split}` split. "
        f"Augmentation: {_augment_text(cfg['data'].get('augment') or {})}.",
        f"- **Model**: timm `{model['variant']}` with `conv_mlp=True`, stem patch "
        f"{model.get('patch_size')}, stochastic depth {model.get('drop_path_rate')}, EMA "
        f"{'on' if model.get('ema') else 'off'}; {', '.join(f'{p:,}' for p in params) or 'n/a'} "
        "parameters in every arm. The arms differ only in the norm (registry name), used "
        "everywhere a ConvNeXt has one (stem, downsampling, blocks, head): "
        + ", ".join(f"`{arm}` = `{norm}`" for arm, norm in sorted(arm_norms.items())) + ".",
        f"- **Training**: {cfg['trainer']['max_epochs']} epochs, AdamW, effective batch "
        f"{train_rec.get('effective_batch', 'n/a')} (per device {cfg['data']['batch_size']} × "
        f"{train_rec.get('world_size', 'n/a')} processes × "
        f"{cfg['trainer'].get('accumulate_grad_batches', 1)} accumulation), lr "
        f"{_lr_text(train_rec.get('lr'))} = {cfg['optim']['base_lr']} × batch / "
        f"{cfg['optim']['base_batch']}, {cfg['optim'].get('warmup_epochs')} warm-up epoch(s) "
        f"then cosine, weight decay {cfg['optim']['weight_decay']}, label smoothing "
        f"{cfg['optim'].get('label_smoothing')}, precision {train_rec.get('precision', 'n/a')}.",
        f"- **Seeds**: " + "; ".join(f"{arm}: {', '.join(map(str, s))}" for arm, s in sorted(seeds.items()))
        + f" (profile `{cfg.get('profile', 'n/a')}`).",
        "- **Training time per arm** (sum over seeds): " + ", ".join(
            f"{arm} {rp.fmt_duration(sum(t))}" for arm, t in sorted(train_times.items())) + ".",
        rp.environment_section([d["dir"] / "env.json" for d in details], what="training runs"),
        "",
    ]
    # ---- results
    top1 = summary[summary["metric"] == "test_top1"].set_index("name")
    top5 = summary[summary["metric"] == "test_top5"].set_index("name")
    rows = []
    for name in top1.index:
        r1, r5 = top1.loc[name], top5.loc[name]
        is_diff = r1["kind"] == "diff"
        rows.append({
            "arm": f"{name} (difference)" if is_diff else name,
            "seeds ok / run": "" if is_diff else f"{int(r1['n'])} / {int(r1['n_runs'])}",
            "top-1 (%) mean ± 95% CI": format_pm(r1["mean"], r1["ci_half"]),
            "top-1 std": rp.fmt_num(r1["std"]),
            "top-5 (%) mean ± 95% CI": format_pm(r5["mean"], r5["ci_half"]),
            "status": r1["status"]})
    lines += ["### Results (test split, after the last epoch)", "", rp.markdown_table(rows), ""]
    lines += ["Per run (`runs.csv`):", "",
              rp.markdown_table(runs, {"arm": "arm", "seed": "seed", "status": "status",
                                       "test_top1": "top-1 (%)", "test_top5": "top-5 (%)"}), ""]
    # ---- verdict
    diff_rows = top1[(top1["kind"] == "diff") & (top1.index == "ln - bn")]
    info = {"dataset": dataset, "category": "inconclusive"}
    pt = regime_table(paper)
    paper_diff = pt["diff"]
    if len(diff_rows):
        d = diff_rows.iloc[0]
        n_bn = int(top1.loc["bn", "n"]) if "bn" in top1.index else 0
        n_ln = int(top1.loc["ln", "n"]) if "ln" in top1.index else 0
        category, sentence = verdict(float(d["mean"]), float(d["ci_low"]), float(d["ci_high"]),
                                     margin, n_bn, n_ln)
        info.update(category=category, diff=float(d["mean"]), ci_half=float(d["ci_half"]))
        lines += [
            "### Verdict", "",
            f"**LN − BN = {_signed(float(d['mean']))} ± {rp.fmt_num(d['ci_half'])} points** "
            f"(95% Welch CI [{_signed(float(d['ci_low']))}, {_signed(float(d['ci_high']))}], "
            f"{n_ln} vs {n_bn} seeds): {sentence}.", "",
            f"For comparison, the paper ({pt['label']}): LN − BN = "
            f"{_signed(paper_diff['diff'])} ± {rp.fmt_num(paper_diff['ci_half'])} points "
            f"(95% CI from its mean ± std over {pt['seeds']} seeds). The absolute accuracies are "
            "on different data sets and are not comparable; the sign and size of the effect "
            "are.", "",
            f"Rule: with d = mean(LN) − mean(BN) and [lo, hi] its 95% Welch interval, "
            f"'does not hurt' means lo ≥ −{margin:g} points (margin `report.equivalence_margin`); "
            f"lo > 0 reads as LN better; hi < −{margin:g}, or hi < 0 with lo < −{margin:g}, as "
            "inconsistent; an interval spanning both 0 and −margin as inconclusive. Diverged "
            "runs carry no accuracy and are excluded from the interval (counted in `status`).",
            ""]
    # ---- figures
    stems = figure_paths(figures_dir, dataset)
    figs = [(stems["learning-curves"], "learning curves: mean ± 1 std over seeds"),
            (stems["final-top1"], "test top-1 per arm, each seed a dot"),
            (stems["ours-vs-paper"], "ours vs paper")]
    present = [(s, alt) for s, alt in figs if s.with_suffix(".png").exists()]
    if present:
        lines += ["### Figures", ""]
        for stem, alt in present:
            lines += [rp.figure_line(stem.with_name(stem.name + ".png"), report_path, alt), ""]
    # ---- deviations
    lines += ["### Deviations from the paper's setup", ""]
    lines += [f"- {x}" for x in _deviations(paper, cfg, train_rec, split_sizes)] + [""]
    info.update(profile=cfg.get("profile"), seeds=sorted({s for v in seeds.values() for s in v}))
    return "\n".join(lines), info


def build_report(results: Path, datasets: list[str], paper_path: Path, out: Path,
                 figures_dir: Path) -> str:
    paper = load_paper(paper_path)
    pt = regime_table(paper)
    meta = paper["paper"]
    head = [
        "# ConvNeXt: does replacing BatchNorm with LayerNorm hurt accuracy?", "",
        f"_Generated by `python -m normrepro.convnext.report` from `{results}/` and "
        f"`{paper_path}`; do not edit by hand._", "",
        "## The claim", "",
        f"{paper['claim']}", "",
        f"Source: {meta['authors']}, *{meta['title']}*, {meta['venue']}, "
        f"arXiv:{meta['arxiv']} ({meta['url']}).", "",
        f"Paper's numbers ({paper['metric']}):", "",
    ]
    rows = []
    for regime in paper["results"]:
        t = regime_table(paper, regime)
        bn, ln = t["arms"]

        def pm(a):
            return format_pm(a["mean"], a["std"]) if a["std"] is not None else rp.fmt_num(a["mean"])

        rows.append({"regime": t["label"], "BN (mean ± std)": pm(bn), "LN (mean ± std)": pm(ln),
                     "LN − BN": _signed(t["diff"]["diff"]), "seeds": t["seeds"],
                     "source": t["source"]})
    head += [rp.markdown_table(rows), ""]
    if pt.get("transcribed_from"):
        head += [f"(Numbers transcribed from {pt['transcribed_from']}.)", ""]

    sections, infos = [], []
    for ds in datasets:
        text, info = dataset_section(results / ds, paper, out, figures_dir)
        sections.append(text)
        infos.append(info)

    tail = ["## Files", "",
            "Per data set, `results/convnext/<dataset>/`: `summary.csv` (columns below), "
            "`runs.csv` (one row per run) and `<arm>/seed<k>/` with `config.yaml` (resolved "
            "config), `metrics.csv` (per epoch), `final.json` (test result and status), "
            "`env.json` (git commit, packages, hardware, wall time).", "",
            "`summary.csv` columns:", "", rp.column_docs(SUMMARY_COLUMNS), "",
            "`runs.csv` columns:", "", rp.column_docs(RUNS_COLUMNS), "",
            "`metrics.csv` columns:", "", rp.column_docs(METRICS_DOC), "",
            "## How to regenerate", ""]
    commands = []
    for info in infos:
        seeds = " ".join(map(str, info["seeds"]))
        commands.append(f"make replicate-convnext PROFILE={info['profile']} "
                        f"DATASET={info['dataset']} SEEDS=\"{seeds}\"")
    commands.append(f"python -m normrepro.convnext.report --results {results} --datasets "
                    f"{' '.join(datasets)} --paper {paper_path} --out {out}")
    tail += [rp.regenerate_block(commands, "`make` redoes only stale stages; an interrupted "
                                 "training resumes from its last checkpoint. The last line "
                                 "rebuilds only this file.")]
    return "\n".join(head + sections + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.convnext.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/convnext")
    parser.add_argument("--datasets", nargs="*", default=None,
                        help="data sets to report (default: every folder with a summary.csv)")
    parser.add_argument("--paper", default="replications/convnext/paper.yaml")
    parser.add_argument("--figures", default=None, help="default: RESULTS/figures")
    parser.add_argument("--out", default=None, help="default: RESULTS/report.md")
    args = parser.parse_args(argv)
    results = Path(args.results)
    datasets = args.datasets or sorted(p.parent.name for p in results.glob("*/summary.csv"))
    if not datasets:
        print(f"error: no {results}/<dataset>/summary.csv found; run the summarize stage",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else results / "report.md"
    figures = Path(args.figures) if args.figures else results / "figures"
    try:
        text = build_report(results, datasets, Path(args.paper), out, figures)
    except (FileNotFoundError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rp.write_report(out, text)
    print(f"[report] wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
