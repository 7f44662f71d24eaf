"""This task's half of the `report` stage (`python -m normrepro.stages.report`): the report of a
replication whose task is image_classification, from the files under results/ and paper.yaml.

Every number in the report is read from a file: the paper's from paper.yaml; ours from
`<dataset>/summary.csv`, `<dataset>/runs.csv` and each run's config.yaml, env.json, final.json.
One section per data set given (the Makefile passes the one it just ran).

Verdicts: one per test of each claim in paper.yaml (`claims`: the arms, the test, the margin),
by the rule every replication shares (`normrepro.paper`, stated in the report too): arms share
seeds (same data order, held-out split and augmentation draws), so the comparison is paired; the
Welch interval of the difference of means is printed as a secondary number. Every verdict names
the regime it was measured in (data set, model, images, epochs, profile).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from normrepro import report as rp
from normrepro.config import get_key, load_yaml
from normrepro.tasks.image_classification.metrics import METRIC_COLUMNS
from normrepro.io import read_json
from normrepro.paper import Paper, load_paper, rule_text
from normrepro.stats import format_pm
from normrepro.tasks import figure_paths
from normrepro.summary import SUMMARY_COLUMNS, read_summary, resolve_run_dirs
from normrepro.tasks.image_classification import SPEC

RUNS_COLUMNS = {
    "arm": "arm name (`replications/<name>/arms/<arm>.yaml`; order and labels: paper.yaml `arms`)",
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


_signed = rp.fmt_signed


def _lr_text(lr) -> str:
    return f"{float(lr):.3g}" if isinstance(lr, (int, float)) else "n/a"


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


def _lr_rule(cfg: dict) -> str:
    """How a run's lr was set, in words."""
    optim = cfg["optim"]
    if optim.get("lr") is not None:
        return ("absolute, chosen for this arm on held-out data "
                f"(`make sweep-{cfg.get('replication', '<replication>')}`)")
    return (f"{optim['base_lr']} × effective batch / {optim['base_batch']}, the linear scaling "
            "rule of Goyal et al. 2017 moving the paper's lr to our batch size")


def _deviations(paper: dict, cfg: dict, train_rec: dict, split_sizes: dict,
                arm_lrs: dict[str, float]) -> list[str]:
    out = []
    ours_values = {"effective_batch": train_rec.get("effective_batch")}
    setup = dict(paper.get("setup") or {})
    theirs_lr = setup.pop("lr", None)
    if theirs_lr is not None and any(lr != theirs_lr for lr in arm_lrs.values()):
        out.append("peak learning rate: paper " + f"{theirs_lr:g} at batch "
                   f"{setup.get('effective_batch')}; ours " + ", ".join(
                       f"{arm} {_lr_text(lr)}" for arm, lr in sorted(arm_lrs.items()))
                   + f" at batch {train_rec.get('effective_batch')} ({_lr_rule(cfg)})")
    if cfg["optim"].get("lr") is not None:
        out.append("learning rate chosen per arm on held-out data (grid of `sweep.lrs`, one seed, "
                   "best held-out top-1; see the sweep below); the paper used one lr for both "
                   "arms")
    for key, theirs in setup.items():
        ours = ours_values[key] if key in ours_values else get_key(cfg, key, None)
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


def _still_climbing(sweep_summary: Path, tolerance: float = 0.5) -> str:
    """A sentence when the sweep's longer check run still gained more than `tolerance` held-out
    points for some arm: the verdict is then a short-schedule comparison, not a trained one."""
    if not sweep_summary.is_file():
        return ""
    df = pd.read_csv(sweep_summary)
    gains = {r.arm: float(r.check_gain) for r in df.itertuples()
             if math.isfinite(float(r.check_gain))}
    if not gains or max(gains.values()) < tolerance:
        return ""
    epochs = int(df["check_epochs"].max())
    climbing = [a for a, g in gains.items() if g >= tolerance]
    who = ("both arms were" if len(climbing) == len(gains) == 2 else
           "every arm was" if len(climbing) == len(gains) else
           f"{' and '.join(climbing)} {'was' if len(climbing) == 1 else 'were'}")
    return (f"{who} still improving when training stopped (the sweep's run with "
            f"{epochs} epochs gained " + ", ".join(f"{a} {_signed(g)}" for a, g in gains.items())
            + f" held-out points; {tolerance:g} or more counts as still improving), so this "
            "compares the norms after a short schedule, not after training to convergence.")


def _held_out_se(sweep_dir: Path, grid: pd.DataFrame, arm: str, lr: float,
                 top1: float) -> float | None:
    """Binomial standard error (points) of a held-out top-1 of the grid run (arm, lr), with the
    held-out size from that run's config.yaml; None when the config is not there."""
    row = grid[(grid["arm"] == arm) & (grid["lr"] == lr)]
    cfg_path = sweep_dir / str(row["run_dir"].iloc[0]) / "config.yaml" if len(row) else None
    if cfg_path is None or not cfg_path.is_file():
        return None
    n = int((load_yaml(cfg_path) or {}).get("data", {}).get("val_size") or 0)
    if n <= 0 or not math.isfinite(top1):
        return None
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def sweep_section(sweep_dir: Path, report_path: Path, arm_lrs: dict[str, float],
                  per_arm_lrs: bool = True) -> list[str]:
    """The learning-rate sweep behind the arms' lrs, from `sweep/grid.csv` and `summary.csv`.
    `per_arm_lrs`: the profile sets each arm's lr (`arm_overrides.<arm>.optim.lr`)."""
    if not (sweep_dir / "summary.csv").is_file() or not (sweep_dir / "grid.csv").is_file():
        why = ("the profile's per-arm lrs were chosen by it on the development machine, as the "
               "profile's comments say" if per_arm_lrs else
               "this profile sets no per-arm lr: every arm trains at the same lr, not one chosen "
               "for it on held-out data")
        return ["### Learning-rate sweep", "",
                f"No sweep results under `{sweep_dir}`; `make sweep-{sweep_dir.parents[2].name}` "
                f"writes them ({why}).", ""]
    grid = pd.read_csv(sweep_dir / "grid.csv")
    summary = pd.read_csv(sweep_dir / "summary.csv")
    rows = []
    lrs = sorted(set(float(v) for v in grid["lr"]))  # every arm's grid: arms may differ
    for arm, sub in grid.groupby("arm", sort=True):
        row = {"arm": arm, **{f"lr {lr:g}": "–" for lr in lrs}}
        for r in sub.sort_values("lr").itertuples():
            cell = rp.fmt_num(r.val_top1) if r.status == "ok" else str(r.status)
            row[f"lr {r.lr:g}"] = f"**{cell}**" if bool(r.chosen) else cell
        rows.append(row)
    lines = ["### Learning-rate sweep (held-out top-1, %)", "",
             "Each arm trained once (one seed) per learning rate with this profile's schedule, "
             "scored on the held-out images after the last epoch; the test split is never read. "
             "Bold: the arm's best, which the profile uses; –: not in that arm's grid.", "",
             rp.markdown_table(rows), ""]
    check_rows, mismatch = [], []
    for r in summary.itertuples():
        check_rows.append({"arm": r.arm, "chosen lr": f"{r.chosen_lr:g}",
                           "held-out top-1": rp.fmt_num(r.val_top1),
                           f"after {r.check_epochs} epochs": rp.fmt_num(r.check_val_top1),
                           "gain (points)": _signed(float(r.check_gain)),
                           "check status": r.check_status})
        used = arm_lrs.get(r.arm)
        if used is not None and math.isfinite(float(r.chosen_lr)) and \
                not math.isclose(float(used), float(r.chosen_lr), rel_tol=1e-9):
            mismatch.append(f"{r.arm}: runs used {used:g}, sweep chose {r.chosen_lr:g}")
    lines += ["Does training longer still change the answer? Each arm once more at its chosen lr "
              "with more epochs (same seed), held-out top-1:", "",
              rp.markdown_table(check_rows), ""]
    for r in summary.itertuples():
        if str(getattr(r, "chosen_at_edge", False)).lower() == "true":
            lrs = grid.loc[grid["arm"] == r.arm, "lr"]
            end = "largest" if math.isclose(float(r.chosen_lr), float(lrs.max())) else "smallest"
            text = (f"{r.arm}: the chosen lr {r.chosen_lr:g} is the grid's {end}, so the best "
                    f"lr may lie outside the grid; the runner-up ({r.runner_up_lr:g}) scored "
                    f"{_signed(float(r.runner_up_val_top1) - float(r.val_top1))} points against it")
            se = _held_out_se(sweep_dir, grid, r.arm, float(r.chosen_lr), float(r.val_top1))
            lines += [text + (f" (one standard error of that held-out accuracy: {se:.2f} points)."
                              if se is not None else "."), ""]
    if mismatch:
        lines += ["**Warning**: the runs above did not use the sweep's choice (" +
                  "; ".join(mismatch) + "); update `arm_overrides` in the profile.", ""]
    png = sweep_dir / "figures" / "sweep.png"
    if png.is_file():
        lines += [rp.figure_line(png, report_path, "held-out top-1 vs learning rate per arm"), ""]
    return lines


def at_chance_runs(runs: pd.DataFrame, num_classes: int) -> list[str]:
    """Finished runs whose test top-1 is below twice chance (2 x 100 / classes %): trained to the
    end without a NaN (so not `diverged`) but collapsed; "<arm> seed <k> (<top-1> %)" each."""
    limit = 2 * 100.0 / num_classes
    ok = runs[(runs["status"] == "ok") & (pd.to_numeric(runs["test_top1"], errors="coerce") < limit)]
    return [f"{r.arm} seed {r.seed} ({float(r.test_top1):.2f} %)" for r in ok.itertuples()]


def _at_chance_text(collapsed: list[str], num_classes: int) -> str:
    if not collapsed:
        return ""
    return (f"**At chance level** (test top-1 below twice chance, {2 * 100.0 / num_classes:g} % "
            f"for {num_classes} classes): {', '.join(collapsed)}. Such a run trained to the end "
            "without a NaN, so it is not counted as diverged, but it learned nothing usable (its "
            "held-out curve is in its metrics.csv); it enters its arm's mean like any finished run, "
            "so that arm's interval is wide because of it, not for lack of seeds.")


def _architecture(model: dict) -> tuple[str, str]:
    """One model config in words: the timm model, and where its norms are."""
    common = (f"stochastic depth {model.get('drop_path_rate')}, EMA "
              f"{'on' if model.get('ema') else 'off'}")
    if str(model["variant"]).startswith("vit_"):
        return (f"timm VisionTransformer `{model['variant']}`, patch {model.get('patch_size')}, "
                f"{common}", "everywhere a ViT has one (norm1 and norm2 of every block, the final norm)")
    return (f"timm `{model['variant']}` with `conv_mlp=True`, stem patch {model.get('patch_size')}, "
            f"{common}", "everywhere a ConvNeXt has one (stem, downsampling, blocks, head)")


def _model_lines(details: list[dict], params_by_arm: dict[str, list[int]]) -> str:
    """The model(s) of the arms: one sentence when every arm shares the architecture, one part
    per architecture otherwise (a replication may compare norms on ConvNeXt and on a ViT)."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for d in details:
        if "config.yaml" in d:
            model = d["config.yaml"]["model"]
            groups.setdefault(_architecture(model), {})[d["row"]["arm"]] = model["norm"]

    def params(arms) -> str:
        return ", ".join(f"{p:,}" for p in sorted({p for a in arms for p in params_by_arm.get(a, [])})) or "n/a"

    def norms_text(norms: dict[str, str]) -> str:
        return ", ".join(f"`{arm}` = `{norm}`" for arm, norm in sorted(norms.items()))

    if len(groups) == 1:
        (((text, where), norms),) = groups.items()
        return (f"- **Model**: {text}; {params(norms)} parameters in every arm. The arms differ "
                f"only in the norm (registry name), used {where}: {norms_text(norms)}.")
    parts = [f"({i}) {text}; {params(norms)} parameters; the norm used {where}: {norms_text(norms)}"
             for i, ((text, where), norms) in enumerate(groups.items(), 1)]
    return ("- **Models**: the arms differ in the architecture and the norm (registry name): "
            + "; ".join(parts) + ".")


def dataset_section(ds_dir: Path, paper: Paper, report_path: Path, figures_dir: Path) -> tuple[str, dict]:
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
    n_test = sorted({f["n_test"] for f in finals if f.get("n_test")})
    test_split = next((f["test_split"] for f in finals if f.get("test_split")), "test")
    seeds = {arm: sorted(runs[runs["arm"] == arm]["seed"].tolist()) for arm in runs["arm"].unique()}

    params_by_arm: dict[str, list[int]] = {}
    for d in details:
        if (d.get("final.json") or {}).get("parameters"):
            params_by_arm.setdefault(d["row"]["arm"], []).append(d["final.json"]["parameters"])
    arm_lrs = {d["row"]["arm"]: d["env.json"]["train"]["lr"] for d in details
               if "train" in d.get("env.json", {})}
    lines = [f"## {dataset}", ""]
    # ---- setting
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
        _model_lines(details, params_by_arm),
        f"- **Training**: {cfg['trainer']['max_epochs']} epochs, AdamW, effective batch "
        f"{train_rec.get('effective_batch', 'n/a')} (per device {cfg['data']['batch_size']} × "
        f"{train_rec.get('world_size', 'n/a')} processes × "
        f"{cfg['trainer'].get('accumulate_grad_batches', 1)} accumulation), peak lr "
        + ", ".join(f"{arm} {_lr_text(lr)}" for arm, lr in sorted(arm_lrs.items()))
        + f" ({_lr_rule(cfg)}), {cfg['optim'].get('warmup_epochs')} warm-up epoch(s) "
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
            "arm": f"{name} (paired difference)" if is_diff else name,
            "seeds ok / run": "" if is_diff else f"{int(r1['n'])} / {int(r1['n_runs'])}",
            "top-1 (%) mean ± 95% CI": format_pm(r1["mean"], r1["ci_half"]),
            "top-1 std": rp.fmt_num(r1["std"]),
            "top-5 (%) mean ± 95% CI": format_pm(r5["mean"], r5["ci_half"]),
            "diverged": f"{int(r1['n_diverged'])} / {int(r1['n_runs'])}",
            "status": r1["status"]})
    lines += ["### Results (test split, after the last epoch)", "", rp.markdown_table(rows), ""]
    sat: dict[str, list[float]] = {}
    for d in details:
        f = d.get("final.json") or {}
        if isinstance(f.get("dyt_saturation_mean"), (int, float)):
            sat.setdefault(d["row"]["arm"], []).append(100.0 * f["dyt_saturation_mean"])
            threshold = f.get("dyt_saturation_threshold")
    if sat:
        lines += [f"DyT inputs in tanh's saturated range (|α·x| ≥ {threshold:g}) on the test "
                  "images, with the trained weights: the mean over layers, per seed, "
                  + "; ".join(f"{arm} " + ", ".join(f"{v:.2f} %" for v in vals)
                              for arm, vals in sorted(sat.items()))
                  + " (each layer's fraction: `dyt_saturation` in final.json).", ""]
    lines += ["Per run (`runs.csv`):", "",
              rp.markdown_table(runs, {"arm": "arm", "seed": "seed", "status": "status",
                                       "test_top1": "top-1 (%)", "test_top5": "top-5 (%)"}), ""]
    from normrepro.tasks.image_classification.data import DataLayoutError, dataset_spec

    try:
        n_classes = dataset_spec(dataset).num_classes
    except DataLayoutError:  # (a data folder not named after a known data set)
        n_classes = None
    chance = _at_chance_text(at_chance_runs(runs, n_classes), n_classes) if n_classes else ""
    lines += [chance, ""] if chance else []
    # ---- verdict
    # every architecture of the arms with its own patch size (ViT: patch, ConvNeXt: stem patch)
    models = sorted({(m["variant"], m.get("patch_size")) for m in
                     (d["config.yaml"]["model"] for d in details if "config.yaml" in d)})
    regime = (f"{dataset}, timm " + " and ".join(
                  f"`{v}` ({'patch' if v.startswith('vit_') else 'stem patch'} {p})" for v, p in models)
              + ", "
              f"{split_sizes.get('train', 'n/a')} training images, "
              f"{cfg['trainer']['max_epochs']} epochs, profile `{cfg.get('profile', 'n/a')}`")
    info = {"dataset": dataset, "regime": regime}
    numbers = paper.numbers()
    claim_text, info["verdicts"] = rp.claim_lines(
        paper, summary[summary["metric"] == paper.metric.name].set_index("name"), numbers)
    climbing = _still_climbing(ds_dir / "sweep" / "summary.csv")
    spread = (f"with 95% Welch intervals from its mean ± std over {numbers['seeds']} seeds (the "
              "paper does not give per-seed pairs)" if numbers["seeds_stated"] else
              "without intervals (no spread stated)")
    lines += [
        "### Verdict", "",
        f"Measured in: {regime}." + (f" **Caveat**: {climbing}" if climbing else ""), "",
        *claim_text,
        *([chance, ""] if chance else []),
        f"The paper's differences are from its {numbers['label']}, {spread}. The absolute "
        "accuracies are on different data sets and are not comparable; the sign and size of the "
        "effect are.", "",
        rule_text(paper.metric) + " Divergence rates are in the table above.", ""]
    # ---- figures
    stems = figure_paths(SPEC, figures_dir, dataset)
    figs = [(stems["curves"], "learning curves: mean ± 1 std over seeds"),
            (stems["final"], "test top-1 per arm, each seed a dot"),
            (stems["ours-vs-paper"], "ours vs paper")]
    present = [(s, alt) for s, alt in figs if s.with_suffix(".png").exists()]
    if present:
        lines += ["### Figures", ""]
        for stem, alt in present:
            lines += [rp.figure_line(stem.with_name(stem.name + ".png"), report_path, alt), ""]
    per_arm_lrs = len({get_key(c, "optim.lr", None) for c in configs}) > 1   # arms' own lrs
    lines += sweep_section(ds_dir / "sweep", report_path, arm_lrs, per_arm_lrs)
    # ---- deviations
    lines += ["### Deviations from the paper's setup", ""]
    lines += [f"- {x}" for x in _deviations(paper.data, cfg, train_rec, split_sizes, arm_lrs)]
    lines += [""]
    info.update(profile=cfg.get("profile"), seeds=sorted({s for v in seeds.values() for s in v}))
    return "\n".join(lines), info


def build_report(results: Path, datasets: list[str], paper_path: Path, out: Path,
                 figures_dir: Path) -> str:
    paper = load_paper(paper_path)
    name = paper_path.parent.name  # the replication: its make targets and results folder
    meta = paper.data["paper"]
    head = [
        f"# {paper.data['question']}", "",
        f"_Generated by `python -m normrepro.stages.report` from `{results}/` and "
        f"`{paper_path}`; do not edit by hand._", "",
        "## The claim", "",
        f"{paper.data['claim']}", "",
        f"Source: {meta['authors']}, *{meta['title']}*, {meta['venue']}, "
        f"arXiv:{meta['arxiv']} ({meta['url']}).", "",
        f"Paper's numbers ({paper.metric.definition or paper.metric.label}):", "",
    ]

    def pm(a):
        return format_pm(a["mean"], a["std"]) if a["std"] is not None else rp.fmt_num(a["mean"])

    rows = []
    for regime in paper.data["results"]:
        t = paper.numbers(regime)
        row = {"regime": t["label"]}
        row.update({f"{a['label']} (mean ± std)": pm(a) for a in t["arms"]})
        row.update({f"{paper.label(d['b'])} − {paper.label(d['a'])}": _signed(d["diff"])
                    for d in t["diffs"]})
        row.update(seeds=t["seeds_stated"] or "not stated", source=t["source"])
        rows.append(row)
    head += [rp.markdown_table(rows, list(dict.fromkeys(k for r in rows for k in r))), ""]
    transcribed = paper.numbers()["transcribed_from"]
    if transcribed:
        head += [f"(Numbers transcribed from {transcribed}.)", ""]

    sections, infos = [], []
    for ds in datasets:
        text, info = dataset_section(results / ds, paper, out, figures_dir)
        sections.append(text)
        infos.append(info)

    tail = ["## Files", "",
            f"Per data set, `results/{name}/<profile>/<dataset>/`: `summary.csv` (columns below), "
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
        if (results / info["dataset"] / "sweep" / "summary.csv").is_file():
            commands.append(f"make sweep-{name} PROFILE={info['profile']} "
                            f"DATASET={info['dataset']}   # the lr grid (not rerun by the next line)")
        commands.append(f"make replicate-{name} PROFILE={info['profile']} "
                        f"DATASET={info['dataset']} SEEDS=\"{seeds}\"")
    commands.append(f"python -m normrepro.stages.report --replication {paper_path.parent} --results {results} "
                    f"--datasets {' '.join(datasets)} --out {out}")
    tail += [rp.regenerate_block(commands, "`make` redoes only stale stages; an interrupted "
                                 "training resumes from its last checkpoint. The last line "
                                 "rebuilds only this file.")]
    return "\n".join(head + sections + tail)
