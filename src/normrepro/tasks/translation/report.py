"""This task's half of the `report` stage (`python -m normrepro.stages.report`): the report of a
replication whose task is translation, from the files under results/ and paper.yaml.

Every number is read from a file: the paper's from paper.yaml; ours from
`<data>/summary.csv`, `<data>/runs.csv`, each run's config.yaml, train.json, final.json, env.json,
the prepared data's MANIFEST.json, and (when present) the cross-check's `crosscheck.json` and the
bench's JSON. One section per data folder.

Verdicts: one per test of each claim in paper.yaml (a claim may carry a `secondary` test,
reported after the primary one), by the rule every replication shares (`normrepro.paper`, stated
in the report too): d = mean over seeds of b[seed] − a[seed] in test tokenized BLEU (the arms
share seeds, hence data order and the initialisation of shared parameters), [lo, hi] its
paired-t 95% interval; the Welch interval of the difference of means is printed as a secondary
number. Every verdict names the proxy it was measured in (corpus, model size, updates).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from normrepro import report as rp
from normrepro import sweep
from normrepro.config import get_key, load_yaml
from normrepro.io import read_json
from normrepro.paper import Paper, judge, load_paper, rule_text
from normrepro.stats import format_pm, paired_diff_ci
from normrepro.tasks import figure_paths
from normrepro.summary import SUMMARY_COLUMNS, read_summary, resolve_run_dirs
from normrepro.tasks.translation.common import METRIC_COLUMNS
from normrepro.tasks.translation import AVGSTATS_METRICS, SPEC

NORM_TEXT = {"layer": "LayerNorm", "batch": "textbook masked BatchNorm",
             "bn_official": "BatchNorm of the released PowerNorm code (MaskSyncBatchNorm)", "power_vanilla": "PowerNorm-vanilla",
             "power": "PowerNorm", "rms": "RMSNorm", "group": "GroupNorm", "instance": "InstanceNorm"}
METRICS_DOC = {
    "updates": "optimizer updates so far", "epoch": "epoch in progress (1-based)",
    "train_loss": "label-smoothed training loss since the previous validation (bits/token)",
    "train_nll_loss": "training NLL since the previous validation (bits/token)",
    "val_loss": "label-smoothed validation loss (bits/token), fairseq's `valid_loss`",
    "val_nll_loss": "validation NLL (bits/token)", "val_ppl": "2^val_nll_loss",
    "val_bleu": "greedy tokenized BLEU on the first `val_bleu.sentences` validation sentences",
    "lr": "learning rate after the last update", "train_tokens": "target tokens since the previous validation",
    "train_tokens_per_s": "training throughput (target tokens/s) since the previous validation",
    "wall_s": "wall time since the start of training",
}
assert set(METRICS_DOC) == set(METRIC_COLUMNS), "document every metrics.csv column"
RUNS_COLUMNS = {
    "arm": "arm (`replications/<name>/arms/<arm>.yaml`; order and labels: paper.yaml `arms`)",
    "seed": "training seed",
    "status": "`ok`, `diverged` (non-finite loss) or `missing` (no final.json)",
    "test_bleu_tok": "test tokenized BLEU (the paper's metric)",
    "test_bleu_sacre": "test sacreBLEU, detokenized, case-insensitive",
    "<ood>_bleu_tok / _sacre": "the same on an out-of-domain test set (ding = Ding dictionary sentences)",
    "test_avgstats_bleu_tok / _sacre": "secondary: test BLEU of the averaged checkpoint with its averaged running "
                                       "statistics (the paper's procedure); the columns above use running statistics "
                                       "recomputed for the averaged weights (equal for LayerNorm, which has none)",
    "run_dir": "run folder relative to the data folder",
}


def _proxy_text(cfg: dict, data_name: str, details: list) -> str:
    """The regime a verdict was measured in: corpus, model size, updates, profile."""
    m = cfg.get("model", {})
    updates = sorted({int(d["train.json"].get("updates", 0)) for d in details
                      if isinstance(d.get("train.json"), dict) and d["train.json"].get("updates")})
    return (f"{data_name}, {m.get('encoder_layers')}+{m.get('decoder_layers')}-layer Transformer "
            f"d{m.get('encoder_embed_dim')}, {'/'.join(map(str, updates)) or 'n/a'} updates, "
            f"profile `{cfg.get('profile', 'n/a')}`")


_signed = rp.fmt_signed


def _load(ds_dir: Path):
    summary = read_summary(ds_dir / "summary.csv")
    runs = pd.read_csv(ds_dir / "runs.csv")
    details = []
    for run_dir, row in zip(resolve_run_dirs(runs, ds_dir), runs.to_dict("records")):
        d = {"row": row, "dir": run_dir}
        for name in ("config.yaml", "final.json", "train.json", "env.json"):
            path = run_dir / name
            if path.is_file():
                d[name] = load_yaml(path) if name.endswith(".yaml") else read_json(path)
        details.append(d)
    return summary, runs, details


def _elapsed(details: list[dict]) -> float | None:
    """Wall time spanned by the runs: from the first training process start (train.json) to the
    last evaluation end (env.json)."""
    import datetime as dt

    def ts(text):
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timestamp()

    starts = [ts(d["train.json"]["started_utc"]) for d in details if (d.get("train.json") or {}).get("started_utc")]
    ends = [ts(d["env.json"]["finished_utc"]) for d in details if (d.get("env.json") or {}).get("finished_utc")]
    return max(ends) - min(starts) if starts and ends else None


def _data_manifest(final: dict) -> dict:
    path = Path((final.get("sets") or {}).get("test", {}).get("data", "")) / "MANIFEST.json"
    return read_json(path) if path.is_file() else {}


def _arms_text(configs: dict) -> str:
    parts = []
    for arm, cfg in configs.items():
        m = cfg["model"]
        parts.append(f"`{arm}` = encoder {NORM_TEXT.get(m['encoder_norm'], m['encoder_norm'])}, "
                     f"decoder {NORM_TEXT.get(m['decoder_norm'], m['decoder_norm'])}")
    return "; ".join(parts)


def _lrs_text(configs: dict) -> str:
    """The peak lr, or each arm's where they differ (chosen per arm by a sweep)."""
    lrs = {arm: float(c["optim"]["lr"]) for arm, c in configs.items()}
    if len(set(lrs.values())) == 1:
        return f"{next(iter(lrs.values())):g}"
    return "per arm (" + ", ".join(f"{arm} {lr:g}" for arm, lr in lrs.items()) + ")"


def _deviations(paper: dict, cfg: dict, data_name: str, manifest: dict, details: list = ()) -> list[str]:
    out = []
    for key, theirs in (paper.get("setup") or {}).items():
        ours = get_key(cfg, key, None)
        if ours != theirs:
            out.append(f"`{key}`: paper {theirs!r}, ours {ours!r}")
    if get_key(cfg, "data.dataset", None) != "iwslt14":
        out.append(f"data: {data_name} (Bible verses, Elberfelder 1905 → World English Bible), not IWSLT14 TED "
                   "talks; absolute BLEU is not comparable with the paper, the differences between arms are")
    t = cfg["trainer"]
    precisions = sorted({str(d["train.json"].get("precision")) for d in details
                         if isinstance(d.get("train.json"), dict) and d["train.json"].get("precision")})
    if any(p not in ("32-true", "32") for p in precisions):
        out.append(f"precision {', '.join(precisions)}; the official scripts train in fp32 (no --fp16)")
    multiple = int((cfg.get("data") or {}).get("required_batch_size_multiple") or 1)
    if multiple != 8:
        out.append(f"training batches with required_batch_size_multiple={multiple}; fairseq's default "
                   "(kept by the official scripts) is 8 (test batches use 1 everywhere, so no sentence "
                   "is dropped from a test set)")
    if t.get("max_updates"):
        out.append(f"training stops after {t['max_updates']} updates (the paper trains to convergence with "
                   f"early stopping, tens of thousands of updates)")
    if t.get("val_every_updates"):
        out.append(f"snapshots (and the averaged last {t.get('keep_snapshots')}) are taken every "
                   f"{t['val_every_updates']} updates instead of at epoch ends")
    if int(get_key(cfg, "eval.recompute_stats_batches", None) or 0) > 0:
        out.append("primary evaluation with the BN/PN running statistics of the averaged checkpoint recomputed for "
                   "the averaged weights on training batches (SWA's `update_bn`); the paper's procedure (fairseq's "
                   "`average_checkpoints.py`) keeps the averaged statistics, reported here as the secondary "
                   "evaluation")
    if (manifest.get("options") or {}).get("subset"):
        out.append(f"a subset of the corpus: {manifest['options']['subset']} sentences (max "
                   f"{manifest['options'].get('max_words')} words)")
    out.append("Moses tokenization by sacremoses without HTML escaping (tokenized BLEU is unchanged: "
               "tokens map one to one); PowerNorm's final encoder norm warms up for the LR warm-up like "
               "the others unless a profile sets `norm_overrides.encoder_final.power.warmup_iters` (the official "
               "code leaves it at its default 1000; the gpu and paper profiles do)")
    return out


def dataset_section(ds_dir: Path, paper: Paper, report_path: Path, figures_dir: Path) -> tuple[str, dict]:
    data_name = ds_dir.name
    summary, runs, details = _load(ds_dir)
    configs = {}
    for d in details:
        if "config.yaml" in d:
            configs.setdefault(d["row"]["arm"], d["config.yaml"])
    if not configs:
        raise FileNotFoundError(f"no run config under {ds_dir}; run the pipeline first")
    cfg = next(iter(configs.values()))
    finals = [d["final.json"] for d in details if "final.json" in d]
    trains = [d["train.json"] for d in details if "train.json" in d]
    manifest = _data_manifest(finals[0]) if finals else {}
    stats = manifest.get("stats", {})
    seeds = {arm: sorted(runs[runs["arm"] == arm]["seed"].tolist()) for arm in runs["arm"].unique()}
    m, t, o = cfg["model"], cfg["trainer"], cfg["optim"]
    params = sorted({tr["parameters"] for tr in trains if tr.get("parameters")})
    updates = sorted({tr["updates"] for tr in trains if tr.get("updates") is not None})
    epochs = sorted({tr.get("epochs") for tr in trains if tr.get("epochs") is not None})
    ood_sets = [k for k in (finals[0].get("sets") or {}) if k != "test"] if finals else []
    ood_sizes = {k: finals[0]["sets"][k].get("sentences") for k in ood_sets}

    lines = [f"## {data_name}", "", "### Our setting", ""]
    lines += [
        f"- **Data**: `{get_key(cfg, 'data.dataset', None)}` prepared as `{data_name}`: {stats.get('train.sentences', 'n/a')} "
        f"training / {stats.get('valid.sentences', 'n/a')} validation / {stats.get('test.sentences', 'n/a')} test "
        f"sentence pairs, {stats.get('train.en.bpe_tokens', 'n/a')} target tokens per epoch, joint BPE "
        f"{(manifest.get('options') or {}).get('bpe_size', 'n/a')} merges (lowercased Moses tokens). "
        + ("Out-of-domain: " + ", ".join(f"`{k}` ({n} sentences)" for k, n in ood_sizes.items()) + "."
           if ood_sets else ""),
        f"- **Model**: fairseq transformer `{m['arch']}`, {m['encoder_layers']}+{m['decoder_layers']} layers, "
        f"d={m['encoder_embed_dim']}, FFN {m['encoder_ffn_embed_dim']}, {m['encoder_attention_heads']} heads, "
        f"{'pre' if m.get('encoder_normalize_before') else 'post'}-norm, shared embeddings, dropout {m['dropout']}; "
        f"{', '.join(f'{p:,}' for p in params) or 'n/a'} parameters. Arms: {_arms_text(configs)}.",
        f"- **Training**: {', '.join(map(str, updates)) or 'n/a'} updates "
        f"({', '.join(f'{e:g}' for e in epochs) or 'n/a'} epochs) of ≤ {cfg['data']['max_tokens']} tokens, "
        f"Adam(0.9, 0.98), lr {_lrs_text(configs)} with inverse-sqrt decay after {o['warmup_updates']} warm-up updates "
        f"(PowerNorm warm-up the same), weight decay {o['weight_decay']:g}, label smoothing {o['label_smoothing']}, "
        f"clip-norm {o.get('clip_norm')}; checkpoint = average of the last {t.get('keep_snapshots')} snapshots.",
        f"- **Evaluation**: beam {cfg['eval']['beam']}, length penalty {cfg['eval']['lenpen']}, every test "
        "sentence translated once (asserted). " + _stats_text(cfg),
        "- **Seeds**: " + "; ".join(f"{arm}: {', '.join(map(str, s))}" for arm, s in seeds.items())
        + f" (profile `{cfg.get('profile')}`).",
        rp.environment_section([d["dir"] / "env.json" for d in details], what="runs (train + evaluate)"),
        f"- Elapsed: {rp.fmt_duration(_elapsed(details))} from the first training "
        f"start to the last evaluation end ({cfg.get('parallel_runs', 1)} run(s) at a time; data preparation "
        "not included).",
        "",
    ]
    # ---- results per arm
    metrics = [c for c in runs.columns if c.endswith(("_bleu_tok", "_bleu_sacre")) and c not in AVGSTATS_METRICS]
    by = {k: summary[(summary["metric"] == k)].set_index("name") for k in metrics}
    rows = []
    for arm in by["test_bleu_tok"][by["test_bleu_tok"]["kind"] == "arm"].index:
        r = by["test_bleu_tok"].loc[arm]
        row = {"arm": arm, "seeds ok / run": f"{int(r['n'])} / {int(r['n_runs'])}",
               "test BLEU (tok) ± 95% CI": format_pm(r["mean"], r["ci_half"]), "std": rp.fmt_num(r["std"])}
        for k in metrics[1:]:
            rr = by[k].loc[arm]
            row[k.replace("_bleu_tok", " BLEU (tok)").replace("_bleu_sacre", " sacreBLEU")] = format_pm(rr["mean"], rr["ci_half"])
        row["status"] = r["status"]
        rows.append(row)
    recomputed = AVGSTATS_METRICS[0] in runs.columns
    lines += ["### Results (averaged checkpoint" + (", running statistics recomputed: primary" if recomputed else "")
              + ")", "", rp.markdown_table(rows), ""]
    diff_rows = []
    for name in by["test_bleu_tok"][by["test_bleu_tok"]["kind"] == "diff"].index:
        row = {"difference": name}
        for k in metrics:
            rr = by[k].loc[name]
            row[k] = f"{_signed(rr['mean'])} ± {rp.fmt_num(rr['ci_half'])}"
        diff_rows.append(row)
    if diff_rows:
        lines += ["Differences between arms, per seed (paired-t 95% intervals; BLEU points; the Welch intervals are in summary.csv):", "", rp.markdown_table(diff_rows), ""]
    lines += ["Per run (`runs.csv`):", "", rp.markdown_table(runs.drop(columns=["run_dir"])), ""]
    # ---- ours vs paper
    numbers = paper.numbers()
    theirs = {a["name"]: a["mean"] for a in numbers["arms"]}
    tok = by[paper.metric.name]
    ours = set(tok[tok["kind"] == "arm"].index)
    cmp_rows = [{"arm": arm, f"paper ({numbers['label']}, {paper.metric.label})": rp.fmt_num(theirs.get(arm), 1),
                 f"ours ({data_name})": format_pm(tok.loc[arm, "mean"], tok.loc[arm, "ci_half"])
                 if arm in ours else "n/a"} for arm in paper.arm_order(ours | set(theirs))]
    rel = paper.regime().get("released_checkpoint")
    lines += ["### Ours vs the paper", "", rp.markdown_table(cmp_rows), ""]
    if rel:
        lines += [f"The released {paper.label(rel['arm'])} checkpoint scores {rel['mean']} ({rel['source']}).", ""]
    # ---- verdicts
    info = {"data_name": data_name, "dataset": get_key(cfg, "data.dataset", None), "profile": cfg.get("profile"),
            "seeds": sorted({s for v in seeds.values() for s in v}), "arms": list(seeds)}
    claim_text, info["verdicts"] = rp.claim_lines(paper, tok, numbers)
    lines += ["### Verdict per claim", ""] + claim_text
    if recomputed:
        lines += running_stats_lines(summary, runs, details, paper, cfg)
    lines += [f"Measured in: {_proxy_text(cfg, data_name, details)}.", "",
              rule_text(paper.metric) + " Our absolute BLEU is on a different corpus and model "
              "size; only the sign and size of the differences are compared with the paper.", ""]
    sigs = sorted({f.get("bleu_sacre_signature") for f in finals if f.get("bleu_sacre_signature")})
    tsigs = sorted({f.get("bleu_tok_signature") for f in finals if f.get("bleu_tok_signature")})
    lines += ["BLEU signatures: tokenized " + ", ".join(f"`{s}`" for s in tsigs)
              + "; sacreBLEU " + ", ".join(f"`{s}`" for s in sigs) + ".", ""]
    # ---- figures
    stems = figure_paths(SPEC, figures_dir, data_name)
    figs = [(stems["curves"], "validation loss and greedy BLEU per update, mean ± 1 std over seeds"),
            (stems["final"], "test tokenized BLEU per arm, each seed a dot"),
            (stems["ours-vs-paper"], "ours vs paper Table 1")]
    present = [(s, alt) for s, alt in figs if s.with_name(s.name + ".png").exists()]
    if present:
        lines += ["### Figures", ""]
        for stem, alt in present:
            lines += [rp.figure_line(stem.with_name(stem.name + ".png"), report_path, alt), ""]
    lines += sweep.report_lines(ds_dir / "sweep", report_path,
                                {arm: c["optim"]["lr"] for arm, c in configs.items()})
    lines += ["### Deviations from the paper", ""] + [f"- {x}" for x in _deviations(paper.data, cfg, data_name, manifest, details)] + [""]
    return "\n".join(lines), info


def _stats_text(cfg: dict) -> str:
    k = int(get_key(cfg, "eval.recompute_stats_batches", None) or 0)
    if k <= 0:
        return ("BN/PN running statistics: averaged with the weights (`eval.recompute_stats_batches` = 0), as "
                "fairseq's `average_checkpoints.py`.")
    return (f"BN/PN running statistics: recomputed for the averaged weights on up to {k} training batches "
            "(SWA's `update_bn`; primary), and scored averaged as well (secondary, test set only; see below).")


def running_stats_lines(summary: pd.DataFrame, runs: pd.DataFrame, details: list, paper: Paper,
                        cfg: dict) -> list[str]:
    """The averaged checkpoint scored with recomputed (primary) and averaged (secondary) running
    statistics: per arm, the per-seed effect of recomputing, and each claim under the secondary."""
    rec, avg = "test_bleu_tok", AVGSTATS_METRICS[0]
    by = {k: summary[summary["metric"] == k].set_index("name") for k in (rec, avg)}
    same = {}
    batches = set()
    for d in details:
        rs = (d.get("final.json") or {}).get("running_stats") or {}
        arm = d["row"]["arm"]
        if rs:
            same[arm] = same.get(arm, True) and bool((rs.get("averaged") or {}).get("same_as_primary"))
            if (rs.get("recomputed") or {}).get("batches"):
                batches.add(int(rs["recomputed"]["batches"]))
    rows = []
    for arm in by[rec][by[rec]["kind"] == "arm"].index:
        sub = runs[(runs["arm"] == arm) & (runs["status"] == "ok")]
        p = paired_diff_ci(dict(zip(sub["seed"], sub[avg])), dict(zip(sub["seed"], sub[rec])))
        effect = ("identical (no running statistics)" if same.get(arm)
                  else f"{_signed(p['diff'])} ± {rp.fmt_num(p['ci_half'])} (n={p['n']})")
        rows.append({"arm": arm,
                     "recomputed statistics (primary)": format_pm(by[rec].loc[arm, "mean"], by[rec].loc[arm, "ci_half"]),
                     "averaged statistics (secondary)": format_pm(by[avg].loc[arm, "mean"], by[avg].loc[arm, "ci_half"]),
                     "recomputed − averaged, per seed": effect})
    k = int(get_key(cfg, "eval.recompute_stats_batches", None) or 0)
    used = ", ".join(map(str, sorted(batches))) or "no"
    lines = ["### Running statistics after averaging: recomputed (primary) vs averaged (secondary)", "",
             "Averaging the last snapshots averages the BN/PN running statistics too, which were gathered under each "
             "snapshot's own weights, not under their average; only the BN-family arms carry that handicap (LayerNorm "
             f"keeps no running statistics). **Primary** (every number above): the averaged weights with their running "
             f"statistics recomputed on the first {k} training batches of the run's first epoch ({used} batches used), "
             "as SWA's `update_bn` does, so that every arm is scored with statistics that belong to its weights. "
             "**Secondary**: the averaged statistics as fairseq's `average_checkpoints.py` leaves them, the paper's "
             "procedure (test set only). Test tokenized BLEU, 95% intervals:", "", rp.markdown_table(rows), ""]
    claims = []
    for claim in paper.claims:
        if claim.name not in by[avg].index:
            continue
        test = claim.tests[0]
        d = by[avg].loc[claim.name]
        cat, _ = judge(paper, claim, test, by[avg])
        cat_primary, _ = judge(paper, claim, test, by[rec])
        claims.append(f"- {claim.text} ({test.describe(paper.metric.unit)}): {claim.b} − {claim.a} = "
                      f"{_signed(d['mean'])} ± {rp.fmt_num(d['ci_half'])} [{_signed(d['ci_low'])}, "
                      f"{_signed(d['ci_high'])}] → {cat} with averaged statistics; {cat_primary} with "
                      "recomputed ones (primary).")
    if claims:
        lines += ["The claims' primary tests under the averaged statistics (same rule):", ""] + claims + [""]
    return lines


def crosscheck_section(path: Path) -> list[str]:
    if not path.is_file():
        return []
    cc = read_json(path)
    order = sorted(cc["results"], key=lambda k: k != "lightning")
    rows = [{"trainer": k, **{c: v for c, v in cc["results"][k].items() if not isinstance(v, (dict, list))}}
            for k in order]
    keys = {c for r in rows for c in r} - {"trainer"}
    losses = sorted((c for c in keys if c.startswith("val_loss@")), key=lambda c: int(c.split("@")[1]))
    columns = ["trainer"] + [c for c in ("bleu_tok", "bleu_sacre", "fairseq_bleu4", "our_evaluate_bleu_tok")
                             if c in keys] + losses
    return ["## Cross-check against fairseq-train", "",
            f"Arm `{cc.get('arm')}`, seed {cc.get('seed')}, data `{cc.get('data')}`, {cc.get('updates')} updates, same "
            "binarized data, batches and model config; the Lightning module vs `fairseq-train --user-dir "
            "src/normrepro/tasks/translation/fairseq_plugin` + `fairseq-generate` (from `crosscheck.json`):", "",
            rp.markdown_table(rows, columns, digits=3), "",
            f"Largest validation-loss gap: {rp.fmt_num(cc.get('max_abs_val_loss_gap'), 3)} bits/token. Our evaluation "
            f"code on fairseq's checkpoint gives {'exactly' if cc.get('identical_hypotheses_on_fairseq_checkpoint') else 'NOT'}"
            " fairseq-generate's hypotheses.", ""] + ([cc["note"], ""] if cc.get("note") else [])


def bench_section(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    b = read_json(path)
    return ["## Training throughput", "",
            f"Target tokens/s on `{b.get('device')}` (`{path}`): Lightning {rp.fmt_num(b.get('lightning_tokens_per_s'), 0)}, "
            f"fairseq-train {rp.fmt_num(b.get('fairseq_tokens_per_s'), 0)}, ratio "
            f"**{rp.fmt_num(b.get('ratio'), 2)}×** (target ≥ 1.0×; model `{b.get('model')}`, {b.get('updates')} timed updates).", ""]


def build_report(results: Path, datasets: list[str], paper_path: Path, out: Path, figures_dir: Path,
                 bench: Path | None = None, crosscheck: Path | None = None) -> str:
    paper = load_paper(paper_path)
    meta = paper.data["paper"]
    numbers = paper.numbers()
    name = paper_path.parent.name  # the replication: its make targets
    head = [f"# {paper.data['question']}", "",
            f"_Generated by `python -m normrepro.stages.report` from `{results}/` and `{paper_path}`; do not "
            "edit by hand._", "", "## The claim", "", paper.data["claim"], "",
            f"Source: {meta['authors']}, *{meta['title']}*, {meta['venue']}, arXiv:{meta['arxiv']} ({meta['url']}); "
            f"code {meta['code']}.", "",
            *([f"Paper's numbers ({numbers['label']}, {paper.metric.definition or paper.metric.label}):", "",
               rp.markdown_table([{"arm": a["name"], "BLEU": a["mean"], "note": a["note"]}
                                  for a in numbers["arms"]], digits=1), ""]
              if numbers["arms"] else
              [f"Paper's numbers: none ({numbers['label']}; {numbers['source']}). Every number below "
               "is ours.", ""])]
    sections, infos = [], []
    for ds in datasets:
        text, info = dataset_section(results / ds, paper, out, figures_dir)
        sections.append(text)
        infos.append(info)
    tail = crosscheck_section(crosscheck or results / "crosscheck.json") + bench_section(bench)
    tail += ["## Files", "",
             f"Per data folder `{results}/<data>/`: `summary.csv`, `runs.csv` and `<arm>/seed<k>/` with "
             "`config.yaml` (resolved config), `metrics.csv` (per validation), `train.json`, `final.json` (BLEU, "
             "status, signatures, both treatments of the running statistics), `env.json`, `hyps/` (hypotheses, line "
             "i = test sentence i; `hyps/averaged_stats/`: with the averaged running statistics), "
             "`checkpoints/averaged.pt` (the averaged snapshots) and `checkpoints/running_stats.pt` (the running "
             "statistics recomputed for them; empty for LayerNorm).", "",
             "`summary.csv` columns:", "", rp.column_docs(SUMMARY_COLUMNS), "",
             "`runs.csv` columns:", "", rp.column_docs(RUNS_COLUMNS), "",
             "`metrics.csv` columns:", "", rp.column_docs(METRICS_DOC), "", "## How to regenerate", ""]
    commands = []
    for info in infos:
        commands.append(f"make replicate-{name} PROFILE={info['profile']} DATASET={info['dataset']} "
                        f"ARMS=\"{' '.join(info['arms'])}\" SEEDS=\"{' '.join(map(str, info['seeds']))}\"")
    commands.append(f"python -m normrepro.stages.report --replication {paper_path.parent} --results {results} "
                    f"--datasets {' '.join(datasets)} --out {out}")
    tail += [rp.regenerate_block(commands, "`make` redoes only stale stages; an interrupted training resumes "
                                 "from its last checkpoint. The last line rebuilds only this file.")]
    return "\n".join(head + sections + tail)
