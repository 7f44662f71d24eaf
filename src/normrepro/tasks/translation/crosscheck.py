"""Cross-check: one arm trained by `fairseq-train` and by the Lightning module, side by side.

    python -m normrepro.tasks.translation.crosscheck --data data/processed/bible-de-en-smoke \\
        --repl-dir replications/powernorm --profile smoke --arm ln --seed 1 \\
        --out results/powernorm/smoke/crosscheck.json

Both trainers get the same binarized data, model (`--user-dir src/normrepro/tasks/translation/
fairseq_plugin`, the class the Lightning module builds), seed, batches (`--max-tokens`,
`--required-batch-size-multiple 1`, fairseq's own length ordering and epoch shuffle), optimiser,
schedule and number of updates. Both reseed torch with seed + updates before each step, so with
the same initialisation the runs differ only by floating-point summation order and the ε placement
of fairseq's Adam vs torch's AdamW. Validation losses (bits/token) are compared at the same update
counts, and the last checkpoint of each is translated: fairseq's with `fairseq-generate` (its BLEU4
and, on its hypotheses, our tokenized BLEU), ours with `normrepro.tasks.translation.evaluate`. Our
evaluation code also translates fairseq's checkpoint, which must give exactly fairseq-generate's
hypotheses (`identical_hypotheses_on_fairseq_checkpoint`): the evaluation paths agree, so any
BLEU gap comes from training.

Writes `crosscheck.json` (and `crosscheck.md`, a table) beside `--out`; the work folders are
`<out stem>/{lightning,fairseq}/`. fairseq 0.12 calls `torch.load` without `weights_only`, which
torch ≥ 2.6 turns into weights-only loading that rejects fairseq's own checkpoints; its processes run
with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` (our checkpoints, trusted).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from normrepro.errors import cli
from normrepro.io import atomic_write_json, atomic_write_text
from normrepro.tasks.translation.common import LOG, model_args, quiet_logging

PLUGIN = Path(__file__).resolve().parent / "fairseq_plugin"


def fairseq_env(threads: int | None = None) -> dict:
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def fairseq_bin(name: str) -> list[str]:
    """The venv's console script (`fairseq-train`), or the module it wraps."""
    script = Path(sys.executable).parent / f"fairseq-{name}"
    return [str(script)] if script.is_file() else [sys.executable, "-m", f"fairseq_cli.{name}"]


def fairseq_train_args(cfg: dict, data_dir: Path, save_dir: Path) -> list[str]:
    """`fairseq-train` arguments equivalent to a resolved run config (model, data, optimiser)."""
    from normrepro.tasks.translation.model import fairseq_cli_flags

    o, d, t = cfg["optim"], cfg["data"], cfg["trainer"]
    import torch

    args = [str(Path(data_dir) / "bin"), "--user-dir", str(PLUGIN), "--task", "translation", "-s", "de", "-t", "en",
            *fairseq_cli_flags(model_args(cfg)),
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(o.get("label_smoothing", 0.1)),
            "--optimizer", "adam", "--adam-betas", str(tuple(o.get("betas", (0.9, 0.98)))),
            "--adam-eps", str(o.get("eps", 1e-8)), "--weight-decay", str(o.get("weight_decay", 0.0)),
            "--clip-norm", str(o.get("clip_norm") or 0.0),
            "--lr", str(o["lr"]), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(o["warmup_updates"]),
            "--warmup-init-lr", str(o.get("warmup_init_lr", 1e-7)),
            "--max-tokens", str(d["max_tokens"]), "--required-batch-size-multiple", "1",
            "--seed", str(cfg["seed"]), "--save-dir", str(save_dir), "--num-workers", "0",
            "--log-format", "json", "--no-progress-bar"]
    if d.get("train_max_positions"):
        args += ["--max-source-positions", str(d["train_max_positions"]),
                 "--max-target-positions", str(d["train_max_positions"]), "--skip-invalid-size-inputs-valid-test"]
    if not torch.cuda.is_available():
        args += ["--cpu"]
    return args


def _json_records(text: str, tag: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        m = re.search(rf"\| {tag} \| (\{{.*\}})\s*$", line)
        if m:
            out.append(json.loads(m.group(1)))
    return out


def run_fairseq(cfg: dict, data_dir: Path, work: Path, val_every: int, max_updates: int) -> dict:
    from normrepro.tasks.translation.evaluate import tokenized_bleu
    from normrepro.tasks.translation.prepare import read_lines

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    threads = cfg["trainer"].get("threads")
    train_cmd = fairseq_bin("train") + fairseq_train_args(cfg, data_dir, work / "ckpt") + [
        "--max-update", str(max_updates), "--validate-interval-updates", str(val_every),
        "--save-interval-updates", str(max_updates), "--no-epoch-checkpoints", "--no-save-optimizer-state",
        "--log-interval", str(val_every)]
    LOG.info("fairseq-train: %s", " ".join(train_cmd))
    proc = subprocess.run(train_cmd, capture_output=True, text=True, env=fairseq_env(threads))
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train failed (log {work / 'train.log'}):\n{proc.stderr[-3000:]}")
    valid = {int(float(r["valid_num_updates"])): float(r["valid_loss"])
             for r in _json_records(proc.stdout + proc.stderr, "valid")}
    ev = cfg["eval"]
    gen_cmd = fairseq_bin("generate") + [
        str(data_dir / "bin"), "--user-dir", str(PLUGIN), "--task", "translation", "-s", "de", "-t", "en",
        "--path", str(work / "ckpt" / "checkpoint_last.pt"), "--gen-subset", "test", "--beam", str(ev["beam"]),
        "--lenpen", str(ev["lenpen"]), "--max-len-a", str(ev.get("max_len_a", 0)), "--max-len-b",
        str(ev.get("max_len_b", 200)), "--remove-bpe", "--batch-size", str(ev.get("batch_size", 128)),
        "--required-batch-size-multiple", "1",
        "--results-path", str(work / "gen")]
    import torch

    if not torch.cuda.is_available():
        gen_cmd.append("--cpu")
    proc = subprocess.run(gen_cmd, capture_output=True, text=True, env=fairseq_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed:\n{proc.stderr[-3000:]}")
    gen = (work / "gen" / "generate-test.txt").read_text(encoding="utf-8")
    hyps = {}
    for line in gen.splitlines():
        if line.startswith("H-"):
            sid, _, text = line.split("\t", 2)
            hyps[int(sid[2:])] = text
    refs = read_lines(data_dir / "tok" / "test.en")
    if sorted(hyps) != list(range(len(refs))):
        raise AssertionError(f"fairseq-generate translated {len(hyps)} of {len(refs)} test sentences")
    m = re.search(r"BLEU4 = ([0-9.]+)", gen)
    ours_on_theirs = tokenized_bleu([hyps[i] for i in range(len(refs))], refs)[0].score
    same = _our_generation_of(cfg, data_dir, work / "ckpt" / "checkpoint_last.pt", work / "ours-gen")
    return {"valid_loss": valid, "fairseq_bleu4": float(m.group(1)) if m else math.nan,
            "bleu_tok": ours_on_theirs, "sentences": len(hyps),
            "our_evaluate_on_this_checkpoint": same["bleu_tok"],
            "identical_hypotheses": same["hyps"] == [hyps[i] for i in range(len(refs))]}


def _our_generation_of(cfg: dict, data_dir: Path, checkpoint: Path, out_dir: Path) -> dict:
    """Our evaluate path (model class, batching, SequenceGenerator call) on fairseq's checkpoint."""
    import torch

    from normrepro.tasks.translation.datamodule import load_dictionary
    from normrepro.tasks.translation.evaluate import evaluate_set
    from normrepro.tasks.translation.model import build_model
    from normrepro.tasks.translation.prepare import read_lines

    dictionary = load_dictionary(data_dir)
    model = build_model(model_args(cfg), dictionary, dictionary)
    # fairseq's checkpoint holds its config objects, so weights_only loading cannot read it; our file.
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"], strict=True)
    ev = cfg["eval"]
    res = evaluate_set(model.eval(), dictionary, data_dir, out_dir, "test", int(ev["beam"]), float(ev["lenpen"]),
                       int(ev.get("batch_size", 128)), torch.device("cpu"), float(ev.get("max_len_a", 0)),
                       int(ev.get("max_len_b", 200)))
    return {"bleu_tok": res["bleu_tok"], "hyps": read_lines(out_dir / "test.tok.txt")}


def run_lightning(cfg: dict, data_dir: Path, work: Path) -> dict:
    import csv

    from normrepro.tasks.translation.common import run_paths, snapshot_paths
    from normrepro.tasks.translation.evaluate import evaluate_set, load_model
    from normrepro.tasks.translation.train import train_run

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = train_run(work, data_dir)
    with open(run_paths(work)["metrics"], newline="") as fh:
        valid = {int(r["updates"]): float(r["val_loss"]) for r in csv.DictReader(fh)}
    last = snapshot_paths(work)[-1]
    model, dictionary, _, _ = load_model(work, data_dir, last)
    ev = cfg["eval"]
    res = evaluate_set(model, dictionary, data_dir, work / "hyps", "test", int(ev["beam"]), float(ev["lenpen"]),
                       int(ev.get("batch_size", 128)), next(model.parameters()).device,
                       float(ev.get("max_len_a", 0)), int(ev.get("max_len_b", 200)))
    return {"valid_loss": valid, "bleu_tok": res["bleu_tok"], "bleu_sacre": res["bleu_sacre"],
            "sentences": res["sentences"], "checkpoint": last.name, "train_wall_s": summary["wall_time_s"]}


def crosscheck(data_dir: Path, repl_dir: Path, profile: str, arm: str, seed: int, out: Path,
               overrides: list[str] = ()) -> dict:
    from normrepro.config import resolve

    cfg = resolve(repl_dir, profile, arm, seed, overrides)
    t = cfg["trainer"]
    max_updates, val_every = int(t["max_updates"]), int(t["val_every_updates"] or t["max_updates"])
    if max_updates % val_every:
        raise ValueError("crosscheck needs trainer.max_updates to be a multiple of trainer.val_every_updates")
    cfg["trainer"]["early_stop_patience"] = 0
    work = out.with_suffix("")
    ours = run_lightning(cfg, data_dir, work / "lightning")
    theirs = run_fairseq(cfg, data_dir, work / "fairseq", val_every, max_updates)
    updates = sorted(set(ours["valid_loss"]) & set(theirs["valid_loss"]))
    rows = {"lightning": {"bleu_tok": ours["bleu_tok"], "bleu_sacre": ours["bleu_sacre"]},
            "fairseq": {"bleu_tok": theirs["bleu_tok"], "fairseq_bleu4": theirs["fairseq_bleu4"],
                        "our_evaluate_bleu_tok": theirs["our_evaluate_on_this_checkpoint"]}}
    for u in updates:
        rows["lightning"][f"val_loss@{u}"] = ours["valid_loss"][u]
        rows["fairseq"][f"val_loss@{u}"] = theirs["valid_loss"][u]
    gaps = [abs(ours["valid_loss"][u] - theirs["valid_loss"][u]) for u in updates]
    result = {"arm": arm, "seed": seed, "profile": profile, "overrides": list(overrides), "data": str(data_dir),
              "updates": max_updates, "model": {k: cfg["model"][k] for k in ("encoder_layers", "encoder_embed_dim",
                                                                          "encoder_ffn_embed_dim")},
              "results": rows, "max_abs_val_loss_gap": max(gaps) if gaps else None,
              "bleu_tok_gap": ours["bleu_tok"] - theirs["bleu_tok"],
              "identical_hypotheses_on_fairseq_checkpoint": theirs["identical_hypotheses"],
              "details": {"lightning": ours, "fairseq": theirs},
              "note": "val_loss in bits/token (label-smoothed, as fairseq logs valid_loss, rounded by fairseq "
                      "to 3 decimals); bleu_tok = our tokenized BLEU on each trainer's hypotheses; "
                      "fairseq_bleu4 = fairseq-generate's own BLEU (its reference strings, <unk> escaped); "
                      "our_evaluate_bleu_tok = our evaluate code on fairseq's checkpoint."}
    atomic_write_json(out, result)
    cols = list(dict.fromkeys([*rows["lightning"], *rows["fairseq"]]))
    lines = ["| trainer | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k in row else "" for k in cols) + " |")
    atomic_write_text(out.with_suffix(".md"), f"# Cross-check: {arm}, seed {seed}, {max_updates} updates on "
                      f"`{data_dir}`\n\n" + "\n".join(lines) + "\n\nOur evaluate path on fairseq's checkpoint "
                      f"gives {'the same' if theirs['identical_hypotheses'] else 'DIFFERENT'} hypotheses as "
                      "fairseq-generate.\n")
    return result


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.tasks.translation.crosscheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repl-dir", type=Path, required=True, help="the replication folder, e.g. replications/powernorm")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--arm", default="ln")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (e.g. trainer.max_updates=300), applied to both trainers")
    args = parser.parse_args(argv)
    quiet_logging()
    result = crosscheck(args.data, args.repl_dir, args.profile, args.arm, args.seed, args.out, args.set)
    print(json.dumps(result["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
