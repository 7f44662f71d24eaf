"""This task's half of the `evaluate` stage: top-1/top-5 of a trained run on the test split →
`final.json`.

    python -m normrepro.stages.evaluate RUN

Reads RUN/config.yaml, RUN/env.json (written by train when it ended; its `train.status` says
whether the run diverged) and RUN/checkpoints/last.ckpt (the weights after the last epoch: the
paper reports the final model, not the best validation epoch). Writes RUN/final.json with

  status            ok | diverged (NaN/inf training loss, or a non-finite test loss)
  test_top1/top5    accuracy in percent on the test split (the first `data.test_subset`
                    images of a fixed permutation when the profile sets one)
  test_loss         mean cross-entropy (no label smoothing) on the same images
  val_top1          held-out validation accuracy after the last epoch (monitoring only)
  n_test, epochs, train_time_s, eval_time_s, parameters, dataset, arm, seed, variant, norm

This stage runs the plain model on one device (no Lightning Trainer): evaluation needs no
distributed setup and starts faster.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from normrepro.tasks.image_classification.data import (DataLayoutError, ImageClassificationData, augment_tensor_batch,
                                     data_fingerprint)
from normrepro.tasks.image_classification.model import accuracy_counts, build_model, count_parameters
from normrepro.tasks.image_classification.run_config import load_run_config, uses_gpu
from normrepro.errors import CheckpointError, DataError, UserError
from normrepro.io import atomic_write_json, read_json
from normrepro.tasks.image_classification import check_data_arg
from normrepro.rundir import STAMP, checkpoint_problem, parse_stamp
from normrepro.norms.dyt import SaturationRecorder


def load_weights(model: torch.nn.Module, ckpt_path: Path) -> None:
    """Load the LightningModule's `model.*` weights from a Lightning checkpoint."""
    run = ckpt_path.parent.parent
    retrain = (f"retrain the run: rm {run}/env.json and rerun make (training sets the damaged "
               "checkpoint aside and starts over)")
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path} not found: {retrain}")
    problem = checkpoint_problem(ckpt_path)
    if problem is not None:
        raise CheckpointError(f"{ckpt_path} is unreadable: {problem}; {retrain}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)


def check_trained_on_current_data(run: Path, cfg: dict) -> None:
    """The processed data must be what the run was trained on (its stamp's fingerprint)."""
    stamp = run / STAMP
    if not stamp.is_file():
        return
    _, trained_on = parse_stamp(stamp.read_text(encoding="utf-8"))
    now = data_fingerprint(cfg["data"])
    if trained_on is not None and trained_on != now:
        raise DataError(f"{run} was trained on other data than "
                        f"{cfg['data'].get('processed_root', 'data/processed')}/"
                        f"{cfg['data']['dataset']} holds now; rerun make to retrain it")


@torch.inference_mode()
def evaluate_model(model: torch.nn.Module, loader, backend: str, aug: dict, mean, std,
                   device: torch.device, bf16: bool) -> dict:
    model.eval().to(device)
    mean_t = torch.tensor(mean, device=device)
    std_t = torch.tensor(std, device=device)
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if backend == "tensor":
            x = augment_tensor_batch(x, aug, mean_t, std_t, train=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        c1, c5 = accuracy_counts(logits, y)
        top1, top5, n = top1 + int(c1), top5 + int(c5), n + len(y)
    if n == 0:
        raise DataLayoutError("the test split is empty")
    return {"test_loss": loss_sum / n, "test_top1": 100.0 * top1 / n,
            "test_top5": 100.0 * top5 / n, "n_test": n}


def evaluate(run: str | Path) -> dict:
    run = Path(run)
    started = time.time()
    cfg = load_run_config(run / "config.yaml")
    env_path = run / "env.json"
    if not env_path.is_file():
        raise UserError(f"{env_path} not found: training of {run} has not finished "
                                f"(python -m normrepro.tasks.image_classification.train --config {run}/config.yaml "
                                f"--out {run})")
    train_rec = read_json(env_path).get("train", {})
    final = {"dataset": cfg["data"]["dataset"], "arm": cfg.get("arm"), "seed": int(cfg["seed"]),
             "variant": cfg["model"]["variant"], "norm": cfg["model"]["norm"],
             "epochs": train_rec.get("epochs_completed"),
             "train_time_s": train_rec.get("train_time_s")}
    metrics_csv = run / "metrics.csv"
    if metrics_csv.is_file():
        last = pd.read_csv(metrics_csv).tail(1)
        final["val_top1"] = float(last["val_top1"].iloc[0]) if len(last) else None
    if train_rec.get("status", "ok") != "ok":
        final.update(status=train_rec["status"], test_top1=None, test_top5=None, test_loss=None,
                     diverged_at_step=train_rec.get("diverged_at_step"))
        atomic_write_json(run / "final.json", final)
        return final

    check_trained_on_current_data(run, cfg)
    dm = ImageClassificationData(cfg["data"], cfg["seed"],
                                 int(cfg["data"].get("eval_batch_size", cfg["data"]["batch_size"])))
    dm.setup()
    mean, std = dm.norm_stats()
    model = build_model(cfg["model"], dm.num_classes, dm.in_chans, dm.image_size)
    load_weights(model, run / "checkpoints" / "last.ckpt")
    gpu = uses_gpu(cfg)
    device = torch.device("cuda" if gpu else "cpu")
    recorder = SaturationRecorder(model)
    with recorder:
        result = evaluate_model(model, dm.loader("test", train=False), dm.backend,
                                dict(cfg["data"].get("augment") or {}), mean, std, device, bf16=gpu)
    if recorder.layers:
        # DyT models: the fraction of each layer's test-set inputs in tanh's saturated range
        # (|α·x| ≥ SATURATION_THRESHOLD) with the trained weights, and its mean over layers.
        sat = recorder.fractions()
        final.update(dyt_saturation=sat, dyt_saturation_mean=sum(sat.values()) / len(sat),
                     dyt_saturation_threshold=recorder.threshold)
    status = "ok" if math.isfinite(result["test_loss"]) else "diverged"
    final.update(status=status, **result, parameters=count_parameters(model),
                 test_split=dm.spec.test_split, eval_time_s=time.time() - started)
    atomic_write_json(run / "final.json", final)
    return final


def run_stage(run_dir: Path, data: Path | None = None, ood: list[Path] = (),
              process_start: float | None = None) -> int:
    """The `evaluate` stage for one trained run folder."""
    if ood:
        raise UserError("image classification has no out-of-domain test sets; leave --ood out")
    if data is not None:
        check_data_arg(load_run_config(Path(run_dir) / "config.yaml"), run_dir, data)
    final = evaluate(run_dir)
    if final["status"] == "ok":
        print(f"[evaluate] {run_dir}: top-1 {final['test_top1']:.2f}  top-5 "
              f"{final['test_top5']:.2f} on {final['n_test']} test images", flush=True)
    else:
        print(f"[evaluate] {run_dir}: {final['status']} (no test accuracy)", flush=True)
    return 0
