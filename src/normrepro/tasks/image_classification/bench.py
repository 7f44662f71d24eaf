"""Stage `bench`: training images/s of our Lightning step vs a bare PyTorch loop, per arm.

    python -m normrepro.tasks.image_classification.bench --repl replications/convnext --profile cpu \
        --out results/bench/convnext.json [--arms bn ln] [--warmup 5 --steps 30 --repeats 3]
        [--set key=value ...]

Both sides run in this process on the same device, with the same model (same seed), the same
batches (synthetic uint8 images of the profile's data set shape, served by the same DataLoader
and sampler), the same on-device augmentation/Mixup (`prepare_train_batch`), loss
(`loss_fn`), AdamW and per-step schedule (`build_optimizer`) and the same precision (bf16
autocast on GPU). The bare loop is a plain `for` loop; the Lightning side is `Trainer.fit` with
the production LightningModule, configured as in training (no logger, no progress bar, no
checkpointing or validation inside the timed window).

Timing: the first `warmup` steps are excluded; the clock runs from the end of step `warmup-1`
to the end of the last step, after a device synchronisation on GPU, so both sides include data
loading. Sides alternate, `repeats` times; the JSON stores every measurement and the medians,
and ratio = median(Lightning) / median(bare). Target: ratio >= 0.95.

Arms against each other: `relative_to_ln` is each arm's median Lightning images/s over the LN
arm's (the BatchNorm arm's target: >= 0.8, `bn_target_relative_to_ln`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader

from normrepro.config import ConfigError, resolve
from normrepro.tasks.image_classification.data import EpochShuffleSampler, TensorImages, _batch_as_is, dataset_spec
from normrepro.tasks.image_classification.module import ConvNeXtClassifier, build_optimizer
from normrepro.tasks.image_classification.run_config import resolve_precision, uses_gpu
from normrepro.errors import cli
from normrepro.io import atomic_write_json
from normrepro.provenance import env_info
from normrepro.runtime import keep_freed_memory

TARGET_RATIO = 0.95
BN_TARGET_RELATIVE_TO_LN = 0.8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_loader(cfg: dict, n_batches: int, seed: int = 0) -> DataLoader:
    spec = dataset_spec(cfg["data"]["dataset"])
    size = int(cfg["data"].get("image_size") or spec.image_size)
    batch = int(cfg["data"]["batch_size"])
    g = torch.Generator().manual_seed(seed)
    n = n_batches * batch
    images = torch.randint(0, 256, (n, spec.in_chans, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, spec.num_classes, (n,), generator=g)
    ds = TensorImages(images, labels, torch.arange(n).numpy())
    sampler = EpochShuffleSampler(n, seed=seed, shuffle=True, drop_last=True)
    return DataLoader(ds, batch_sampler=BatchSampler(sampler, batch, drop_last=True),
                      collate_fn=_batch_as_is, pin_memory=torch.cuda.is_available())


def _module(cfg: dict) -> ConvNeXtClassifier:
    spec = dataset_spec(cfg["data"]["dataset"])
    L.seed_everything(int(cfg["seed"]), verbose=False)
    mean, std = [0.5] * spec.in_chans, [0.25] * spec.in_chans
    # Served as in-memory tensors on both sides, whatever the profile's data set uses.
    return ConvNeXtClassifier(cfg, spec.num_classes, spec.in_chans, mean, std, "tensor")


def bare_images_per_s(cfg: dict, loader: DataLoader, warmup: int, steps: int,
                      device: torch.device) -> float:
    module = _module(cfg).to(device)
    model = module.model.train()
    opt, sched = build_optimizer(cfg, model, 1, warmup + steps, 1)
    bf16 = resolve_precision(cfg).startswith("bf16")
    batch = int(cfg["data"]["batch_size"])
    loss_sum = None
    t0 = None
    for i, (x, y) in enumerate(loader):
        if i == warmup + steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            inputs, target, soft = module.prepare_train_batch((x, y), i)
            loss = module.loss_fn(model(inputs), target, soft)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        summed = loss.detach() * inputs.shape[0]  # the same bookkeeping as training_step
        loss_sum = summed if loss_sum is None else loss_sum + summed
        if i == warmup - 1:
            _sync(device)
            t0 = time.perf_counter()
    _sync(device)
    if t0 is None:
        raise ValueError("bench: warmup must be at least 1 step")
    return steps * batch / (time.perf_counter() - t0)


class _StepClock(L.Callback):
    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.last = warmup, warmup + steps - 1
        self.device = device
        self.t0 = self.t1 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup - 1:
            _sync(self.device)
            self.t0 = time.perf_counter()
        elif batch_idx == self.last:
            _sync(self.device)
            self.t1 = time.perf_counter()


def lightning_images_per_s(cfg: dict, loader: DataLoader, warmup: int, steps: int,
                           device: torch.device) -> float:
    module = _module(cfg)
    clock = _StepClock(warmup, steps, device)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision=resolve_precision(cfg), max_epochs=1, max_steps=warmup + steps,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        use_distributed_sampler=False, benchmark=uses_gpu(cfg),
                        callbacks=[clock])
    trainer.fit(module, train_dataloaders=loader)
    if clock.t0 is None or clock.t1 is None:
        raise RuntimeError("bench: the Lightning run ended before the timed steps completed")
    return steps * int(cfg["data"]["batch_size"]) / (clock.t1 - clock.t0)


def bench(repl: str | Path, profile: str, arms: list[str], warmup: int, steps: int,
          repeats: int, overrides: list[str] = ()) -> dict:
    results: dict = {}
    first = None
    for arm in arms:
        cfg = resolve(repl, profile, arm, 0, ["trainer.print_epochs=false", *overrides])
        first = first or cfg
        device = torch.device("cuda" if uses_gpu(cfg) else "cpu")
        torch.backends.cudnn.benchmark = uses_gpu(cfg)  # what the Trainer sets, for both sides
        loader = synthetic_loader(cfg, warmup + steps)
        bare, light = [], []
        for r in range(repeats):
            # Alternate which side goes first so slow drift (thermal, other load) hits both.
            order = ("bare", "lightning") if r % 2 == 0 else ("lightning", "bare")
            for side in order:
                if side == "bare":
                    bare.append(bare_images_per_s(cfg, loader, warmup, steps, device))
                else:
                    light.append(lightning_images_per_s(cfg, loader, warmup, steps, device))
            print(f"[bench] {arm} repeat {r + 1}/{repeats}: bare {bare[-1]:.0f} img/s, "
                  f"lightning {light[-1]:.0f} img/s", flush=True)
        med_bare, med_light = statistics.median(bare), statistics.median(light)
        results[arm] = {"bare_images_per_s": med_bare, "lightning_images_per_s": med_light,
                        "ratio": med_light / med_bare, "bare_runs": bare, "lightning_runs": light}
    spec = dataset_spec(first["data"]["dataset"])
    size = int(first["data"].get("image_size") or spec.image_size)
    ratios = [r["ratio"] for r in results.values()]
    ln = results.get("ln", {}).get("lightning_images_per_s")
    relative = ({arm: r["lightning_images_per_s"] / ln for arm, r in results.items()}
                if ln else {})
    return {
        "benchmark": "ConvNeXt training step: Lightning Trainer.fit vs bare PyTorch loop",
        "profile": first["profile"],
        "device": "cuda" if uses_gpu(first) else "cpu",
        "precision": resolve_precision(first),
        "variant": first["model"]["variant"],
        "patch_size": first["model"].get("patch_size"),
        "batch_size": int(first["data"]["batch_size"]),
        "image_shape": [spec.in_chans, size, size],
        "data": "synthetic uint8 images in memory (same batches, sampler and on-device "
                "augmentation for both loops)",
        "warmup_steps": warmup, "timed_steps": steps, "repeats": repeats,
        "overrides": list(overrides),
        "arms": results,
        "min_ratio": min(ratios),
        "target_ratio": TARGET_RATIO,
        "meets_target": min(ratios) >= TARGET_RATIO,
        "relative_to_ln": relative,
        "bn_target_relative_to_ln": BN_TARGET_RELATIVE_TO_LN,
        "bn_meets_target": (relative["bn"] >= BN_TARGET_RELATIVE_TO_LN
                            if "bn" in relative else None),
        "env": env_info(),
    }


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.tasks.image_classification.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repl", required=True, help="the replication folder, e.g. replications/convnext")
    parser.add_argument("--profile", default="auto")
    parser.add_argument("--arms", nargs="+", default=["bn", "ln"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every arm (as normrepro.config resolve)")
    parser.add_argument("--out", required=True, help="results/bench/convnext.json")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        print("error: --warmup, --steps and --repeats must be >= 1", file=sys.stderr)
        return 2
    keep_freed_memory()  # (as the train stage: both loops allocate as training does)
    try:
        result = bench(args.repl, args.profile, args.arms, args.warmup, args.steps, args.repeats,
                       args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, result)
    for arm, r in result["arms"].items():
        print(f"[bench] {arm}: lightning/bare = {r['ratio']:.3f} "
              f"({r['lightning_images_per_s']:.0f} / {r['bare_images_per_s']:.0f} img/s)")
    print(f"[bench] wrote {args.out} (target >= {TARGET_RATIO}: "
          f"{'met' if result['meets_target'] else 'NOT met'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
