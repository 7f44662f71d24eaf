"""Causal leakage ("look-ahead"): how much a norm lets position t see positions > t.

A causal decoder must compute the output at position t from inputs at positions ≤ t. Attention
is masked for that; a norm whose statistics are computed over the sequence axis is not. We
measure it two ways, in training mode, for a norm layer alone (`level = "norm"`, input (T, B, C))
and for a 2-layer pre-norm causal decoder built around it (`level = "decoder"`: masked
self-attention and FFN blocks, every norm taken from the registry):

* `fwd_change`: ‖y'_{≤t} − y_{≤t}‖ / ‖y_{≤t}‖ when the inputs at positions > t are redrawn
  (x → x'): forward look-ahead.
* `grad_future`: ‖∂(r·y_t)/∂x_{>t}‖ / ‖∂(r·y_t)/∂x_{≤t}‖ for a random probe r, as the module's
  backward computes it (for `power` that is the official approximate backward, not the exact
  derivative): gradient flowing to later positions from a loss on position t.
* `bwd_change`: for a loss on positions ≤ t only, the relative change of the gradient reaching
  x_{≤t} when x_{>t} is redrawn: backward look-ahead (the update of the past depends on the
  future).
* `train_eval`: ‖y_train − y_eval‖ / ‖y_eval‖ on the same batch (batch vs running statistics).
* `train_vs_generation`: at each t, the training output y_train(x)_t against what incremental
  generation computes, y_eval(x_{≤t})_t (eval mode, only the prefix exists): the mismatch a
  decoder trained with this norm meets at inference.

Every metric is averaged over the positions t that have a future (t < T − 1), and also given as
the maximum; `by_position.csv` has each t. Values around 1e-16 are float rounding, not leakage:
generation runs the decoder's matmuls on a shorter input (another shape, another summation
order), and PowerNorm's train and eval paths order the same operations differently. Cases: `layer`, `rms`, `group`, `instance`, `batch`,
`power_vanilla`, `power` during warm-up (forward on the batch ψ²_B) and after it (forward on the
running ψ², so `fwd_change` is exactly 0, while its backward still divides by the batch ψ_B and
subtracts ν·z with ν = (1−α)·ema_gz from earlier steps: `grad_future`, `bwd_change` > 0).

Before measuring, each case runs `prep_steps` training steps (forward and backward on batches
from the same distribution) so that running statistics and PowerNorm's `ema_gz` hold realistic
values; every probe then runs on a deep copy, so probes never change each other's state.
Everything is float64 and seeded: exact zeros are exact.

`python -m normrepro.insights.causal --out DIR` writes `causal.csv` (one row per level and case),
`by_position.csv` and `causal.png/.pdf` (annotated heat maps; exact zeros shown as "0").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from normrepro.errors import cli
from normrepro.io import atomic_path
from normrepro.norms import create_norm, eager_kernels


@dataclass(frozen=True)
class Case:
    """One norm configuration: a label, the registry name and its kwargs."""

    label: str
    name: str
    kwargs: dict = field(default_factory=dict)
    warmup: bool | None = None  # PowerNorm: whether the probe step must fall inside warm-up


CASES: tuple[Case, ...] = (
    Case("layer", "layer"),
    Case("rms", "rms"),
    Case("group", "group", {"num_groups": 2}),
    Case("instance", "instance"),
    Case("batch", "batch"),
    Case("power_vanilla", "power_vanilla"),
    Case("power (warm-up)", "power", {"warmup_iters": 10_000, "group_num": 2}, warmup=True),
    Case("power (after warm-up)", "power", {"warmup_iters": 5, "group_num": 2}, warmup=False),
)
METRICS = ("fwd_change", "grad_future", "bwd_change", "train_eval", "train_vs_generation")
SHORT = {"fwd_change": "forward\nchange", "grad_future": "gradient\nto future",
         "bwd_change": "backward\nchange", "train_eval": "train vs\neval",
         "train_vs_generation": "train vs\ngeneration"}


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention on (T, B, C) with a causal mask (written out, so no fused path
    can change what is computed). Masked weights are exactly 0, so position t gets exactly
    nothing, forward or backward, from later positions."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):  # noqa: D102
        T, B, C = x.shape
        q, k, v = self.qkv(x).reshape(T, B, 3, self.heads, C // self.heads).unbind(2)
        scores = torch.einsum("tbhd,sbhd->bhts", q, k) / (C // self.heads) ** 0.5
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
        att = scores.masked_fill(future, float("-inf")).softmax(-1)
        return self.out(torch.einsum("bhts,sbhd->tbhd", att, v).reshape(T, B, C))


class TinyCausalDecoder(nn.Module):
    """Pre-norm decoder stack: h += attn(norm(h)); h += ffn(norm(h)); then a final norm."""

    def __init__(self, norm: str, dim: int = 8, heads: int = 2, layers: int = 2, ffn: int = 16,
                 **norm_kwargs):
        super().__init__()

        def make():
            return create_norm(norm, dim, **norm_kwargs)

        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "norm_attn": make(), "attn": CausalSelfAttention(dim, heads),
                "norm_ffn": make(), "ffn": nn.Sequential(nn.Linear(dim, ffn), nn.GELU(),
                                                         nn.Linear(ffn, dim))}))
        self.final_norm = make()

    def forward(self, x, pad_mask=None):  # noqa: D102
        for blk in self.blocks:
            x = x + blk["attn"](blk["norm_attn"](x, pad_mask=pad_mask))
            x = x + blk["ffn"](blk["norm_ffn"](x, pad_mask=pad_mask))
        return self.final_norm(x, pad_mask=pad_mask)


def build(case: Case, level: str, dim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if level == "norm":
        module = create_norm(case.name, dim, **case.kwargs)
    elif level == "decoder":
        module = TinyCausalDecoder(case.name, dim=dim, **case.kwargs)
    else:
        raise ValueError(f"level must be 'norm' or 'decoder', got {level!r}")
    with torch.no_grad():  # non-trivial affine parameters, so nothing cancels by accident
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") and p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return module.double()


class _Data:
    """Batches x[t, b, c] = μ_c + s_c·ε with per-channel offsets and scales (so centring and
    scaling both matter), from one seeded generator."""

    def __init__(self, dim: int, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.mu = torch.empty(dim, dtype=torch.float64).uniform_(-1.0, 2.0, generator=self.gen)
        self.scale = torch.empty(dim, dtype=torch.float64).uniform_(0.5, 2.0, generator=self.gen)

    def draw(self, T: int, B: int) -> torch.Tensor:
        eps = torch.randn(T, B, self.mu.numel(), generator=self.gen, dtype=torch.float64)
        return self.mu + self.scale * eps

    def noise(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)


def _prepare(module: nn.Module, data: _Data, steps: int, T: int, B: int) -> nn.Module:
    module.train()
    for _ in range(steps):
        x = data.draw(T, B).requires_grad_(True)
        y = module(x, pad_mask=None)
        y.backward(data.noise(*y.shape))
    module.zero_grad(set_to_none=True)
    return module


def _out(prepared: nn.Module, x: torch.Tensor, train: bool = True) -> torch.Tensor:
    m = copy.deepcopy(prepared).train(train)
    with torch.no_grad():
        return m(x, pad_mask=None)


def _grad(prepared: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(prepared).train()
    x = x.clone().requires_grad_(True)
    m(x, pad_mask=None).backward(gy)
    return x.grad


@contextlib.contextmanager
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (10x slower on a busy 2-core machine);
    compiling the fused kernels would cost more than it saves, so `eager_kernels` too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖, exactly 0.0 when a and b are identical."""
    diff = float((a - b).norm())
    return 0.0 if diff == 0.0 else diff / max(float(b.norm()), 1e-300)


def measure(case: Case, level: str = "norm", T: int = 8, B: int = 4, dim: int = 8,
            prep_steps: int = 30, seed: int = 0) -> list[dict]:
    """Per-position leakage metrics of one case (see the module docstring); one row per t."""
    with eager_kernels(), _one_thread():
        data = _Data(dim, seed + 1)
        prepared = _prepare(build(case, level, dim, seed), data, prep_steps, T, B)
        if case.warmup is not None:
            # every probe runs training step prep_steps + 1 of a PowerNorm
            in_warmup = prep_steps + 1 <= case.kwargs["warmup_iters"]
            if in_warmup != case.warmup:
                raise ValueError(
                    f"case {case.label!r}: the probe step {prep_steps + 1} is "
                    f"{'inside' if in_warmup else 'after'} warm-up (warmup_iters="
                    f"{case.kwargs['warmup_iters']}); change prep_steps")
        x = data.draw(T, B)
        y_train, y_eval = _out(prepared, x), _out(prepared, x, train=False)
        train_eval = _rel(y_train, y_eval)
        rows = []
        for t in range(T - 1):
            x_alt = x.clone()
            x_alt[t + 1:] = data.draw(T - t - 1, B)
            fwd = _rel(_out(prepared, x_alt)[: t + 1], y_train[: t + 1])
            gy = torch.zeros_like(x)
            gy[t] = data.noise(B, dim)
            g = _grad(prepared, x, gy)
            future = float(g[t + 1:].norm())
            grad_future = 0.0 if future == 0.0 else future / max(float(g[: t + 1].norm()), 1e-300)
            gy_past = torch.zeros_like(x)
            gy_past[: t + 1] = data.noise(t + 1, B, dim)
            g0 = _grad(prepared, x, gy_past)[: t + 1]
            g1 = _grad(prepared, x_alt, gy_past)[: t + 1]
            gen = _rel(y_train[t], _out(prepared, x[: t + 1], train=False)[t])
            rows.append({"level": level, "case": case.label, "norm": case.name, "t": t,
                         "fwd_change": fwd, "grad_future": grad_future,
                         "bwd_change": _rel(g1, g0), "train_eval": train_eval,
                         "train_vs_generation": gen})
    return rows


def run(cases: Sequence[Case] = CASES, levels: Sequence[str] = ("norm", "decoder"),
        **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, by_position) for every case and level; summary = mean and max over t."""
    by_pos = pd.DataFrame([r for level in levels for case in cases
                           for r in measure(case, level, **kwargs)])
    agg = by_pos.groupby(["level", "case"], sort=False)[list(METRICS)].agg(["mean", "max"])
    agg.columns = [m if s == "mean" else f"{m}_max" for m, s in agg.columns]
    summary = agg.reset_index()
    return summary, by_pos


def plot(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """One annotated heat map per level: cases × metrics (means over t), log colour scale,
    exact zeros in grey and written "0"."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns
    from matplotlib.colors import LogNorm

    from normrepro.plots import save_figure

    levels = list(dict.fromkeys(summary["level"]))
    values = summary[list(METRICS)].to_numpy(dtype=float)
    # Colours from 1e-3 up: smaller non-zero values (float rounding, ~1e-16) take the palest
    # colour; their annotation still gives the number.
    hi = max(float(values.max()), 1.0)
    fig, axes = plt.subplots(1, len(levels), figsize=(5.4 * len(levels), 0.42 * 8 + 1.6),
                             squeeze=False)
    titles = {"norm": "norm layer alone, train mode",
              "decoder": "2-layer causal decoder, train mode"}
    for ax, level in zip(axes[0], levels):
        table = summary[summary["level"] == level].set_index("case")[list(METRICS)]
        annot = table.map(lambda v: "0" if v == 0 else f"{v:.1e}")
        ax.set_facecolor("#dddddd")  # masked (exactly zero) cells show the background
        sns.heatmap(table.where(table > 0), mask=table.to_numpy() == 0, annot=annot.to_numpy(),
                    fmt="", cmap="rocket_r", norm=LogNorm(1e-3, hi, clip=True),
                    cbar=ax is axes[0][-1],
                    ax=ax, annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white")
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            if v == 0:
                ax.text(j + 0.5, i + 0.5, "0", ha="center", va="center", fontsize=8)
        ax.set_title(titles.get(level, level), fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_xticklabels([SHORT[m] for m in METRICS], fontsize=8, rotation=0)
    fig.suptitle("Causal leakage: dependence of position t on positions > t (mean over t)",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_stem)


@cli
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--T", type=int, default=8, help="sequence length (default 8)")
    ap.add_argument("--B", type=int, default=4, help="sentences per batch (default 4)")
    ap.add_argument("--dim", type=int, default=8, help="channels (default 8)")
    ap.add_argument("--prep-steps", type=int, default=30,
                    help="training steps before measuring (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.T < 2 or args.B < 1 or args.dim < 4 or args.dim % 2:
        raise SystemExit("need --T >= 2, --B >= 1 and an even --dim >= 4 (2 heads / 2 groups)")
    start = time.perf_counter()
    summary, by_pos = run(T=args.T, B=args.B, dim=args.dim, prep_steps=args.prep_steps,
                          seed=args.seed)
    for name, df in (("causal.csv", summary), ("by_position.csv", by_pos)):
        with atomic_path(args.out / name, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    paths = plot(summary, args.out / "causal")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        print(summary[["level", "case", *METRICS]].to_string(index=False))
    print(f"wrote {args.out / 'causal.csv'}, {args.out / 'by_position.csv'},",
          ", ".join(map(str, paths)), f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
