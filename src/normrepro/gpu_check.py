"""`make gpu-check`: both replications' `gpu` profiles, briefly, on one GPU -> results/bench/gpu.json.

    python -m normrepro.gpu_check --out results/bench/gpu.json [--warmup 5 --steps 20]

One prepared command for a machine with one GPU, meant to finish in under 5 minutes. Every arm
(every file in `replications/<name>/arms/`) of both replications trains for `warmup` + `steps`
updates in the `gpu` profile's precision (bf16 autocast), model and batch size, through the
production Lightning modules, and the JSON records:

* ConvNeXt: training images/s per arm (the Lightning side of `normrepro.tasks.image_classification.bench`, on
  synthetic uint8 images of the profile's data-set shape: no data needed) and peak GPU memory;
* Translation: target tokens/s per arm (the Lightning side of `normrepro.tasks.translation.bench`) and
  peak GPU memory; Lightning vs `fairseq-train` tokens/s on the `ln` arm, same model and data
  (that module's comparison); and an MFU estimate: the FLOPs of one training step counted with
  `torch.utils.flop_counter.FlopCounterMode` (matrix products and attention, forward and
  backward), per target token, times tokens/s, over the device's peak dense bf16 FLOP/s from
  `PEAK_BF16_TFLOPS` (each entry with its source; a device not in the table gives MFU null).

Translation data: the `gpu` profile's prepared data (`data/processed/<dataset>`) when it exists,
else the `smoke` profile's prepared data, else a synthetic binarised corpus written to a temporary
folder (random tokens, the profile's vocabulary size, IWSLT-like sentence lengths). Which one ran
is printed and stored in `translation.data`; with anything but the real data, tokens/s and MFU
are those of the gpu model on other batches, not the replication's numbers.

Without a CUDA GPU it prints one line and exits 0 without writing anything. `--allow-cpu`
exists for the tests only: the same code on CPU (with `--profile smoke`), numbers meaningless.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from normrepro.errors import cli

REPLICATIONS = Path("replications")
DATA = Path("data/processed")
BUDGET_S = 300

# Peak dense (no sparsity) BF16 tensor-core throughput, TFLOP/s. Matched against
# torch.cuda.get_device_name() in order: every token of an entry must appear in the name.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float | None, str]] = [
    # NVL variants run at other clocks and power: no figure rather than the SXM one
    (("H100", "NVL"), None, "not in the table"),
    (("H200", "NVL"), None, "not in the table"),
    (("H100", "PCIe"), 756.0, "NVIDIA H100 datasheet: PCIe, BF16 Tensor Core 1,513 TFLOPS with sparsity, halved"),
    (("H100",), 989.5, "NVIDIA H100 datasheet: SXM, BF16 Tensor Core 1,979 TFLOPS with sparsity, halved"),
    (("H200",), 989.5, "NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity, halved"),
    (("A100",), 312.0, "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity)"),
    (("L40S",), 362.05, "NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS (733 with sparsity)"),
    (("L4",), 121.0, "NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS with sparsity, halved"),
    (("A10",), 125.0, "NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOPS (250 with sparsity)"),
]


def no_gpu_message() -> str:
    return ("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing "
            "measured, nothing written. Run `make gpu-check` on a machine with one GPU.")


def peak_bf16_flops(device_name: str) -> tuple[float | None, str | None]:
    """(peak dense bf16 FLOP/s, source) of a device, or (None, None) when not in the table."""
    words = device_name.split()
    for tokens, tflops, source in PEAK_BF16_TFLOPS:
        # whole-word match for short model names (an "L4" must not match "L40S")
        if all(any(tok == w or (len(tok) > 3 and tok in w) for w in words) for tok in tokens):
            return (None, None) if tflops is None else (tflops * 1e12, source)
    return None, None


def mfu(flops_per_token: float | None, tokens_per_s: float | None,
        peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak; None if anything is
    unknown."""
    if not flops_per_token or not tokens_per_s or not peak_flops:
        return None
    return flops_per_token * tokens_per_s / peak_flops


def count_step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of `step()` (returning a loss) and its backward, as FlopCounterMode counts them
    (matrix products, convolutions, attention; elementwise ops and norms count zero)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step().backward()
    return int(counter.get_total_flops())


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def arms_of(repl: Path) -> list[str]:
    """Every arm of a replication: the files in its arms/ folder."""
    return sorted(p.stem for p in (repl / "arms").glob("*.yaml"))


# ------------------------------------------------------------------------------ ConvNeXt

def convnext_arms(repl: Path, profile: str, arms: list[str], warmup: int, steps: int,
                  device: torch.device) -> dict:
    from normrepro.config import resolve
    from normrepro.tasks.image_classification.bench import lightning_images_per_s, synthetic_loader
    from normrepro.tasks.image_classification.run_config import resolve_precision, uses_gpu

    out = {}
    for arm in arms:
        cfg = resolve(repl, profile, arm, 0, ["trainer.print_epochs=false"])
        torch.backends.cudnn.benchmark = uses_gpu(cfg)
        loader = synthetic_loader(cfg, warmup + steps)
        _peak_memory_reset(device)
        t0 = time.perf_counter()
        ips = lightning_images_per_s(cfg, loader, warmup, steps, device)
        out[arm] = {"images_per_s": ips, "peak_memory_gib": _peak_memory_gib(device),
                    "precision": resolve_precision(cfg), "norm": cfg["model"].get("norm"),
                    "batch_size": int(cfg["data"]["batch_size"]), "variant": cfg["model"]["variant"],
                    "wall_s": time.perf_counter() - t0}
        print(f"[gpu-check] convnext {arm}: {ips:.0f} images/s", flush=True)
    return out


# ------------------------------------------------------------------------------ translation

def translation_data(repl: Path, profile: str, data_root: Path = DATA) -> tuple[Path | None, str]:
    """(prepared data folder, which) for the profile: 'real' when its own data is prepared,
    'smoke' when only the smoke profile's is, (None, 'synthetic') when neither is."""
    from normrepro.config import load_profile

    for prof, kind in ((profile, "real"), ("smoke", "smoke")):
        cfg = load_profile(repl, prof)
        variant = cfg["data"].get("variant") or ""
        folder = data_root / (cfg["data"]["dataset"] + (f"-{variant}" if variant else ""))
        if (folder / "MANIFEST.json").is_file() and (folder / "bin" / "dict.de.txt").is_file():
            return folder, kind
    return None, "synthetic"


def write_synthetic_corpus(out: Path, vocab: int, sentences: int = 6000, seed: int = 0) -> Path:
    """A binarised de-en corpus in the layout the data module and fairseq read (`bin/`: the
    joined dictionary and train/valid/test splits): random tokens, lengths 4-60 (mean ~25, as
    IWSLT14's BPE sentences), target lengths near the source's."""
    from fairseq.data import Dictionary, indexed_dataset

    gen = torch.Generator().manual_seed(seed)
    d = Dictionary()
    for i in range(vocab):
        d.add_symbol(f"w{i}", n=vocab - i)
    d.finalize(padding_factor=8)
    binary = out / "bin"
    binary.mkdir(parents=True, exist_ok=True)
    for lang in ("de", "en"):
        d.save(str(binary / f"dict.{lang}.txt"))
    for split, n in (("train", sentences), ("valid", 64), ("test", 64)):
        src_len = (torch.randn(n, generator=gen) * 10 + 25).round().clamp(4, 60).long()
        tgt_len = (src_len.float() * (0.8 + 0.4 * torch.rand(n, generator=gen))).round().clamp(3, 60).long()
        for lang, lengths in (("de", src_len), ("en", tgt_len)):
            prefix = binary / f"{split}.de-en.{lang}"
            builder = indexed_dataset.make_builder(str(prefix) + ".bin", impl="mmap", vocab_size=len(d))
            for length in lengths.tolist():
                ids = torch.randint(d.nspecial, len(d), (length,), generator=gen)
                builder.add_item(torch.cat([ids, torch.tensor([d.eos()])]).int())
            builder.finalize(str(prefix) + ".idx")
    return out


def _bench_cfg(cfg: dict, total_updates: int) -> dict:
    """A run config trimmed to `total_updates` updates with validation off (as translation.bench)."""
    cfg["trainer"].update(max_updates=total_updates, val_every_updates=None, early_stop_patience=0,
                          resume_every_updates=None, max_epochs=10_000)
    cfg["val_bleu"] = {"sentences": 0}
    return cfg


def translation_flops(cfg: dict, data_dir: Path, device: torch.device) -> dict:
    """FLOPs of one training step of the translation model on its first training batch, and
    per target token."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from normrepro.norms import eager_kernels
    from normrepro.tasks.translation.common import model_args
    from normrepro.tasks.translation.datamodule import datamodule_from_config
    from normrepro.tasks.translation.module import TranslationModule

    dm = datamodule_from_config(data_dir, cfg)
    torch.manual_seed(int(cfg["seed"]))
    module = TranslationModule(model_args(cfg), dm.dictionary, cfg["optim"],
                               label_smoothing=cfg["optim"].get("label_smoothing", 0.1),
                               seed=int(cfg["seed"])).to(device).train()
    batch = move_data_to_device(next(iter(dm.train_dataloader())), device)
    bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = module.compute_loss(batch)
        return loss

    # Eager norm kernels: compiled regions are not traced by FlopCounterMode, and the norms do no
    # matrix products anyway.
    with eager_kernels():
        flops = count_step_flops(step)
    tokens = int(batch["ntokens"])
    return {"flops_per_step": flops, "target_tokens_in_step": tokens,
            "source_tokens_in_step": int(batch["net_input"]["src_lengths"].sum()),
            "flops_per_target_token": flops / max(tokens, 1),
            "counted": "torch.utils.flop_counter.FlopCounterMode, one forward+backward of the "
                       "first training batch (matmuls and attention; bf16 autocast on GPU)"}


def translation_arms(repl: Path, profile: str, arms: list[str], data_dir: Path, warmup: int,
                     steps: int, device: torch.device) -> dict:
    from normrepro.config import resolve
    from normrepro.tasks.translation.bench import _lightning_tokens_per_s

    out = {}
    for arm in arms:
        cfg = _bench_cfg(resolve(repl, profile, arm, 1), warmup + steps)
        _peak_memory_reset(device)
        t0 = time.perf_counter()
        tps = _lightning_tokens_per_s(cfg, data_dir, warmup)
        out[arm] = {"target_tokens_per_s": tps, "peak_memory_gib": _peak_memory_gib(device),
                    "encoder_norm": cfg["model"]["encoder_norm"],
                    "decoder_norm": cfg["model"]["decoder_norm"],
                    "wall_s": time.perf_counter() - t0}
        print(f"[gpu-check] translation {arm}: {tps:.0f} target tokens/s", flush=True)
    return out


def lightning_vs_fairseq(repl: Path, profile: str, data_dir: Path, warmup: int, steps: int,
                         lightning_tokens_per_s: float) -> dict:
    """fairseq-train's target tokens/s on the `ln` arm's model and data, next to Lightning's."""
    from normrepro.config import resolve
    from normrepro.tasks.translation.bench import _fairseq_tokens_per_s

    steps = max(steps // warmup, 2) * warmup  # fairseq logs every `warmup` updates
    cfg = _bench_cfg(resolve(repl, profile, "ln", 1), warmup + steps)
    t0 = time.perf_counter()
    fair = _fairseq_tokens_per_s(cfg, data_dir, warmup, warmup + steps)
    return {"arm": "ln", "lightning_tokens_per_s": lightning_tokens_per_s,
            "fairseq_tokens_per_s": fair, "ratio": lightning_tokens_per_s / fair,
            "fairseq_updates": warmup + steps, "wall_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------ the report

def assemble(device: dict, convnext: dict, translation: dict, flops: dict | None,
             crosscheck: dict | None, data: dict, settings: dict, wall_s: float) -> dict:
    """The gpu.json document from the measurements (pure: tested with made-up numbers)."""
    peak, source = peak_bf16_flops(device.get("name") or "")
    per_token = (flops or {}).get("flops_per_target_token")
    arms = {}
    for arm, r in translation.items():
        arms[arm] = {**r, "mfu": mfu(per_token, r.get("target_tokens_per_s"), peak)}
    headline = arms.get("ln") or next(iter(arms.values()), {})
    return {
        "what": "make gpu-check: both replications' gpu profiles for a few updates per arm",
        "device": device,
        "peak_bf16_flops": peak, "peak_source": source,
        "settings": settings,
        "convnext": {"arms": convnext},
        "translation": {"data": data, "arms": arms, "flops": flops,
                        "mfu_ln": headline.get("mfu"),
                        "lightning_vs_fairseq": crosscheck},
        "wall_s": wall_s, "budget_s": BUDGET_S, "within_budget": wall_s <= BUDGET_S,
    }


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"type": "cpu", "name": None, "note": "--allow-cpu (tests only): not GPU figures"}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": torch.cuda.get_device_name(device),
            "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
            "count_visible": torch.cuda.device_count(), "cuda": torch.version.cuda}


def run(out: Path, profile: str, warmup: int, steps: int, convnext_arm_list: list[str] | None,
        translation_arm_list: list[str] | None, fairseq: bool, data: Path | None,
        repl_root: Path = REPLICATIONS) -> dict:
    from normrepro.io import atomic_write_json
    from normrepro.provenance import env_info

    import lightning  # noqa: F401  (imported first: it resets the log levels quiet_logging sets)

    from normrepro.tasks.translation.common import quiet_logging

    quiet_logging()
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cx_repl, pn_repl = repl_root / "convnext", repl_root / "powernorm"
    cx_arms = convnext_arm_list or arms_of(cx_repl)
    pn_arms = translation_arm_list or arms_of(pn_repl)
    print(f"[gpu-check] {device_info(device).get('name') or 'CPU'}: profile {profile}, "
          f"{warmup}+{steps} updates per arm; convnext arms {' '.join(cx_arms)}; translation "
          f"arms {' '.join(pn_arms)}", flush=True)

    convnext = convnext_arms(cx_repl, profile, cx_arms, warmup, steps, device)

    with tempfile.TemporaryDirectory() as tmp:
        if data is not None:
            data_dir, kind = data, "given"
        else:
            data_dir, kind = translation_data(pn_repl, profile)
        if data_dir is None:
            from normrepro.config import load_profile

            cfg = load_profile(pn_repl, profile)
            vocab = int(((cfg.get("prepare") or {}).get(cfg["data"]["dataset"]) or {}).get("bpe_size") or 10000)
            data_dir = write_synthetic_corpus(Path(tmp) / "synthetic-de-en", vocab)
        notes = {"real": "the profile's own prepared data",
                 "smoke": "the real data is not prepared here: the smoke profile's prepared data "
                          "(its small vocabulary: tokens/s and MFU are not the real data's)",
                 "synthetic": "neither the real nor the smoke data is prepared here: a synthetic "
                              "binarised corpus (random tokens, the profile's vocabulary size, "
                              "IWSLT-like lengths)",
                 "given": "the folder given with --data"}
        data_info = {"kind": kind, "path": str(data_dir) if kind != "synthetic" else None,
                     "note": notes[kind]}
        print(f"[gpu-check] translation data: {kind} ({notes[kind]})", flush=True)

        from normrepro.config import resolve

        translation = translation_arms(pn_repl, profile, pn_arms, data_dir, warmup, steps, device)
        flops = translation_flops(_bench_cfg(resolve(pn_repl, profile, "ln", 1), 1), data_dir, device)
        crosscheck = None
        if fairseq and "ln" in translation:
            crosscheck = lightning_vs_fairseq(pn_repl, profile, data_dir, warmup, steps,
                                              translation["ln"]["target_tokens_per_s"])
            print(f"[gpu-check] lightning/fairseq-train (ln): {crosscheck['ratio']:.3f}", flush=True)

    wall = time.perf_counter() - started
    settings = {"profile": profile, "warmup_updates": warmup, "timed_updates": steps,
                "convnext_images": "synthetic uint8 images of the profile's data-set shape "
                                   "(normrepro.tasks.image_classification.bench), in memory"}
    result = assemble(device_info(device), convnext, translation, flops, crosscheck, data_info,
                      settings, wall)
    result["env"] = env_info(wall_time_s=wall)
    atomic_write_json(out, result)
    mfu_ln = result["translation"]["mfu_ln"]
    print(f"[gpu-check] wrote {out} in {wall:.0f} s (budget {BUDGET_S} s); MFU (ln) "
          f"{'unknown' if mfu_ln is None else f'{100 * mfu_ln:.1f} %'}", flush=True)
    if wall > BUDGET_S:
        print(f"[gpu-check] warning: took {wall:.0f} s, over the {BUDGET_S} s budget; lower "
              "--steps or pass fewer arms", flush=True)
    return result


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m normrepro.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/bench/gpu.json"))
    ap.add_argument("--profile", default="gpu")
    ap.add_argument("--warmup", type=int, default=5, help="untimed updates per arm")
    ap.add_argument("--steps", type=int, default=20, help="timed updates per arm")
    ap.add_argument("--convnext-arms", nargs="+", default=None, help="default: every arm")
    ap.add_argument("--translation-arms", nargs="+", default=None, help="default: every arm")
    ap.add_argument("--no-fairseq", action="store_true", help="skip the fairseq-train comparison")
    ap.add_argument("--data", type=Path, default=None,
                    help="a prepared translation data folder (default: see the module doc)")
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # tests only
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1")
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(no_gpu_message(), flush=True)
        return 0
    result = run(args.out, args.profile, args.warmup, args.steps, args.convnext_arms,
                 args.translation_arms, not args.no_fairseq, args.data)
    return 0 if all(math.isfinite(r["target_tokens_per_s"])
                    for r in result["translation"]["arms"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
