"""The training runs behind the insights experiments: ConvNeXt and Transformer with a recorder.

Each run is one arm of one of the two replications, trained by that replication's own Lightning
module, data module and trainer settings, with a callback attached that records batch statistics:

* `StatsRecorderCallback` (`record.kind: batch_stats`, single process): batch vs running
  statistics and the gradients through them, for the fluctuation figure → `batch_stats.csv`;
* `WorkerStatsCallback` (`record.kind: worker_stats`, DDP): each worker's statistics vs the
  global batch's → `worker_stats.csv`.

Which runs exist and how each is derived from its replication's configs is declared in
`replications/insights/` (`runs.<name>`: `replication`, `arm`, `seed`, `record`, and `set`, dotted
overrides of the replication's config; `upstream.<replication>`: the replication profile the run
starts from). The resolved config keeps everything the replication's code needs, plus an
`insights` section (run name, recorder settings).

    python -m normrepro.insights.runs resolve --profile P --run NAME --out RUN/config.yaml
    python -m normrepro.insights.runs train --config RUN/config.yaml --out RUN [--data DIR]
    python -m normrepro.insights.runs data --profile P --run NAME [--name]   # its data folder (name)
    python -m normrepro.insights.runs args --profile P --stage S --out FILE

`resolve` and `args` rewrite their file only when it changes (make then redoes only what
depends on it). `train` writes, besides what the replication's trainer writes (`metrics.csv`,
checkpoints; `env.json` for ConvNeXt), the recorder CSV and last `record.json` (the make target:
status, steps, wall time). An interrupted run resumes from its last checkpoint; a finished run is
left as it is; a run whose config or data changed is moved aside and starts over (the stamp rule
of `normrepro.rundir`, as in the replications). A config with `trainer.devices: 2` and
`trainer.strategy: ddp` trains under Lightning DDP: Lightning re-launches this same command once
per extra worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from normrepro.config import ConfigError, dump, load_profile, load_yaml, resolve
from normrepro.errors import UserError, cli
from normrepro.io import atomic_write_json, read_json, write_if_changed
from normrepro.runtime import launch_rank

REPL_DIR = Path("replications/insights")
REPLICATIONS = ("convnext", "powernorm")
RECORD_KINDS = ("batch_stats", "worker_stats")


def _spec(profile_cfg: dict, run: str) -> dict:
    runs = profile_cfg.get("runs") or {}
    if run not in runs:
        raise ConfigError(f"unknown run {run!r}; the profile defines {', '.join(sorted(runs))}")
    spec = runs[run]
    for key in ("replication", "arm", "seed", "record"):
        if key not in spec:
            raise ConfigError(f"runs.{run} lacks {key!r}")
    if spec["replication"] not in REPLICATIONS:
        raise ConfigError(f"runs.{run}.replication must be one of {REPLICATIONS}, "
                          f"got {spec['replication']!r}")
    if spec["record"].get("kind") not in RECORD_KINDS:
        raise ConfigError(f"runs.{run}.record.kind must be one of {RECORD_KINDS}")
    return spec


def resolve_run(profile: str, run: str, repl_dir: str | Path = REPL_DIR,
                overrides: list[str] = ()) -> dict:
    """The full config of one insights run (see the module docstring); `overrides` (SET) apply
    to the insights profile."""
    repl_dir = Path(repl_dir)
    prof = load_profile(repl_dir, profile, list(overrides))
    spec = _spec(prof, run)
    upstream = (prof.get("upstream") or {}).get(spec["replication"])
    if not upstream:
        raise ConfigError(f"{repl_dir}: upstream.{spec['replication']} (the replication profile "
                          "the runs start from) is not set")
    # JSON is YAML, so set_dotted parses these values back exactly (lists, dicts, null).
    overrides = [f"{k}={json.dumps(v)}" for k, v in (spec.get("set") or {}).items()]
    cfg = resolve(repl_dir.parent / spec["replication"], upstream, spec["arm"], int(spec["seed"]),
                  overrides, override_source=f"{repl_dir}/profiles/{prof['profile']}.yaml runs.{run}.set")
    cfg["insights"] = {"run": run, "profile": prof["profile"], "upstream_profile": upstream,
                       "record": dict(spec["record"])}
    return cfg


def data_dir(cfg: dict) -> Path:
    """Where the run's prepared data lives, as its task's pipeline prepares it."""
    from normrepro.stages._task import task_package

    return task_package(cfg["task"]).data_dir(cfg)


def _callback(cfg: dict, out: Path):
    rec = cfg["insights"]["record"]
    every = int(rec.get("every_n_steps", 1))
    if rec["kind"] == "batch_stats":
        from normrepro.insights.fluctuation import StatsRecorderCallback

        return StatsRecorderCallback(out / "batch_stats.csv", rec.get("layers"), every)
    from normrepro.insights.ddp import WorkerStatsCallback

    return WorkerStatsCallback(out / "worker_stats.csv", rec.get("layers"), every)


def _record_csv(cfg: dict, out: Path) -> Path:
    kind = cfg["insights"]["record"]["kind"]
    return out / f"{kind}.csv"


def _train_image(cfg: dict, out: Path) -> dict:
    import torch

    from normrepro.tasks.image_classification.train import train

    devices = cfg["trainer"].get("devices", 1)
    world = int(devices) if str(devices).isdigit() else 1
    if world > 1 and str(cfg["trainer"].get("accelerator")) == "cpu":
        # one share of the cores per worker: oversubscribed threads would measure contention
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    # The recorder's CSV belongs to the training: moved aside or cleared with it.
    record = train(cfg, out, callbacks=[_callback(cfg, out)],
                   partial=(_record_csv(cfg, out).name, "record.json"))
    steps = None
    if (out / "metrics.csv").is_file():
        import pandas as pd

        metrics = pd.read_csv(out / "metrics.csv")
        steps = int(metrics["step"].iloc[-1]) if len(metrics) else 0
    return {"status": record["status"], "steps": steps, "epochs": record["epochs_completed"],
            "world_size": record["world_size"], "train_time_s": record["train_time_s"],
            **({"up_to_date": True} if record.get("up_to_date") else {})}


def _train_text(cfg: dict, out: Path, data: Path) -> dict:
    from normrepro.provenance import write_env_json
    from normrepro.tasks.translation.common import quiet_logging
    from normrepro.tasks.translation.train import train

    quiet_logging()
    # The task's train owns skip/resume/restart; the recorder's CSV belongs to the training.
    rec = train(cfg, out, data, callbacks=[_callback(cfg, out)],
                partial=(_record_csv(cfg, out).name, "env.json", "record.json"))
    summary = {"status": rec["status"], "steps": rec["updates"], "epochs": None,
               "world_size": rec["world_size"], "train_time_s": rec["wall_time_s"],
               "last_val_loss": rec["last_val_loss"], "resumed": rec["resumed"]}
    if rec.get("up_to_date"):
        return {**summary, "up_to_date": True}
    if launch_rank() == 0:
        write_env_json(out / "env.json", wall_time_s=summary["train_time_s"], train=summary,
                       run={"dataset": cfg["data"]["dataset"], "arm": cfg.get("arm"), "seed": cfg["seed"],
                            "encoder_norm": cfg["model"]["encoder_norm"]})
    return summary


def train_run(config: str | Path, out: str | Path, data: str | Path | None = None) -> dict:
    """Train (or resume) one insights run; returns the content of its `record.json`."""
    started = time.time()
    cfg = load_yaml(config)
    if "insights" not in cfg:
        raise ConfigError(f"{config} is not an insights run config (no `insights` section); "
                          "write it with python -m normrepro.insights.runs resolve")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data) if data else data_dir(cfg)
    if cfg["task"] == "image_classification":
        summary = _train_image(cfg, out)
    else:
        summary = _train_text(cfg, out, data)
    csv = _record_csv(cfg, out)
    record = {"run": cfg["insights"]["run"], "replication": cfg["replication"], "arm": cfg.get("arm"),
              "seed": cfg["seed"], "data": str(data), "record_csv": csv.name,
              "wall_time_s": round(time.time() - started, 1), **summary}
    if launch_rank() == 0:
        if not csv.is_file():
            raise UserError(f"training of {out} finished but recorded nothing into {csv}; "
                            "check insights.record.layers and every_n_steps")
        if summary.get("up_to_date") and (out / "record.json").is_file():
            os.utime(out / "record.json")  # tell make it is up to date
            return read_json(out / "record.json")
        atomic_write_json(out / "record.json", record)
    return record


def stage_args(profile: str, stage: str, repl_dir: str | Path = REPL_DIR,
               overrides: list[str] = ()) -> str:
    """The command-line arguments the profile gives a stage (`stages.<stage>`, a string)."""
    prof = load_profile(repl_dir, profile, list(overrides))
    stages = prof.get("stages") or {}
    if stage not in stages:
        raise ConfigError(f"unknown stage {stage!r}; the profile's stages are {', '.join(sorted(stages))}")
    value = stages[stage]
    return "" if value is None else str(value).strip()


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.insights.runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("resolve", help="write a run's resolved config (only if it changed)")
    p.add_argument("--profile", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--repl-dir", default=REPL_DIR, type=Path)
    p = sub.add_parser("train", help="train (or resume) a run with its recorder")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path, help="prepared data folder (default: from the config)")
    p = sub.add_parser("data", help="print the prepared-data folder of a run")
    p.add_argument("--profile", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--name", action="store_true", help="print the dataset name instead")
    p.add_argument("--repl-dir", default=REPL_DIR, type=Path)
    p = sub.add_parser("args", help="write a stage's command-line arguments (only if changed)")
    p.add_argument("--profile", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--repl-dir", default=REPL_DIR, type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "resolve":
        write_if_changed(args.out, dump(resolve_run(args.profile, args.run, args.repl_dir)))
    elif args.cmd == "data":
        cfg = resolve_run(args.profile, args.run, args.repl_dir)
        if args.name:
            print(cfg["data"]["dataset"])
        else:
            print(data_dir(cfg))
    elif args.cmd == "args":
        write_if_changed(args.out, stage_args(args.profile, args.stage, args.repl_dir) + "\n")
    else:
        record = train_run(args.config, args.out, args.data)
        if launch_rank() == 0:
            print(f"[insights] {args.out}: {record['status']}, recorded into "
                  f"{record['record_csv']} ({record['wall_time_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
