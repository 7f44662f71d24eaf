"""Dynamic Tanh (`dyt`, `dyt2d`; Zhu et al. 2025): the paper's formula, α's initialisation, no
reduction axes, padding and causality (exactly nothing leaks), gradients, state and train/eval.

The registry-wide tests (shapes, axes, state dicts, gradcheck) in test_norms.py and
test_insights_axes.py cover both names as well; these are the DyT-specific checks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normrepro import schema
from normrepro.tasks.image_classification.model import build_model, count_parameters, norm_modules
from normrepro.insights.causal import METRICS, Case, measure
from normrepro.norms.dyt import SATURATION_THRESHOLD, DyT, DyT2d, SaturationRecorder
from normrepro.norms import IMAGE_NORMS, SEQUENCE_NORMS, create_norm, get_norm_layer

T, B, C = 5, 3, 6
TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}


def _random_params(norm: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _input(layout: str, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (T, B, C) if layout == "dyt" else (B, C, 4, 5)
    return 3 * torch.randn(shape, generator=g, dtype=dtype)


def _paper_dyt(x, alpha, gamma, beta, channel_dim):
    """The paper's definition (Section 4, Algorithm 1) written out: x → tanh(α·x), then the
    per-channel γ ⊙ · + β, with C on the last axis (images are moved to channels-last)."""
    moved = x.movedim(channel_dim, -1)
    out = torch.tanh(alpha * moved)
    if gamma is not None:
        out = gamma * out + beta
    return out.movedim(-1, channel_dim)


# ---------------------------------------------------------------- registry, α and parameters

def test_both_layouts_are_registered():
    assert SEQUENCE_NORMS["dyt"] is DyT and IMAGE_NORMS["dyt2d"] is DyT2d
    assert "dyt" in schema.SEQUENCE_NORM_NAMES and "dyt2d" in schema.IMAGE_NORM_NAMES
    assert isinstance(create_norm("dyt", C), DyT) and isinstance(create_norm("dyt2d", C), DyT2d)


@pytest.mark.parametrize("name", ["dyt", "dyt2d"])
def test_alpha_starts_at_half_and_gamma_beta_at_one_and_zero(name):
    norm = create_norm(name, C)
    assert norm.alpha.shape == (1,) and norm.alpha.item() == 0.5 and norm.alpha.requires_grad
    assert torch.equal(norm.weight, torch.ones(C)) and torch.equal(norm.bias, torch.zeros(C))
    assert create_norm(name, C, alpha_init=1.2).alpha.item() == pytest.approx(1.2)
    assert get_norm_layer(name, alpha_init=0.8)(C).alpha.item() == pytest.approx(0.8)
    bare = create_norm(name, C, affine=False)
    assert bare.weight is None and bare.bias is None
    assert [n for n, _ in bare.named_parameters()] == ["alpha"]  # α stays learnable
    assert "alpha_init=0.5" in repr(norm)


def test_dyt_has_no_eps_and_says_so():
    with pytest.raises(ValueError, match=r"does not take \['eps'\]"):
        create_norm("dyt", C, eps=1e-5)


@pytest.mark.parametrize("name", ["dyt", "dyt2d"])
def test_state_dict_has_the_official_layout(name):
    """The official `DynamicTanh` stores alpha (1,), weight (C,), bias (C,): its state dicts load."""
    official = {"alpha": torch.tensor([0.7]), "weight": torch.linspace(0.5, 1.5, C),
                "bias": torch.linspace(-1, 1, C)}
    norm = create_norm(name, C)
    assert {k: tuple(v.shape) for k, v in norm.state_dict().items()} == \
        {"alpha": (1,), "weight": (C,), "bias": (C,)}
    norm.load_state_dict(official)
    x = _input(name, torch.float32)
    expected = _paper_dyt(x, official["alpha"], official["weight"], official["bias"],
                          -1 if name == "dyt" else 1)
    torch.testing.assert_close(norm(x), expected)


# ---------------------------------------------------------------- the formula

@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name", ["dyt", "dyt2d"])
def test_formula_matches_the_papers_definition(name, affine):
    norm = create_norm(name, C, affine=affine).double()
    _random_params(norm)
    x = _input(name)
    expected = _paper_dyt(x, norm.alpha, norm.weight, norm.bias, -1 if name == "dyt" else 1)
    y = norm(x, pad_mask=None) if name == "dyt" else norm(x)
    torch.testing.assert_close(y, expected, rtol=1e-15, atol=1e-15)
    assert y.dtype == torch.float64 and y.shape == x.shape


# ---------------------------------------------------------------- the kernels' float32 tanh

def test_float32_tanh_is_within_its_bound_and_compiles_to_the_same_bits():
    """`_tanh` (the rational tanh of the float32 kernels) on every 61st float32 in [0, 9.2] and
    their negatives: within 6.1 ulp of tanh (the bound over every float32, see `norms.dyt`),
    |t| ≤ 1, odd, exact at 0 and tiny z, ±1 beyond; eager and compiled give the same bits, so
    an element's value does not depend on where it sits in a vectorised loop."""
    from normrepro.norms.dyt import _tanh

    bits = torch.arange(0, int(torch.tensor(9.2).view(torch.int32)), 61, dtype=torch.int32)
    z = torch.cat([bits.view(torch.float32), -bits.view(torch.float32)])
    t = _tanh(z)
    ref = torch.tanh(z.double())
    ulp = (torch.nextafter(ref.float().abs(), torch.tensor(2.0)) - ref.float().abs()).double()
    assert ((t.double() - ref).abs() / ulp).max() <= 6.1
    assert t.abs().max() <= 1.0 and torch.equal(t[len(bits):], -t[:len(bits)])
    tiny = torch.tensor([0.0, -0.0, 1e-45, -3e-20, 1e-5])
    assert torch.equal(_tanh(tiny), tiny)
    assert torch.equal(_tanh(torch.tensor([9.2, 50.0, float("inf"), -1e30])),
                       torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert _tanh(torch.tensor([float("nan")])).isnan().all()
    compiled = torch.compile(_tanh, dynamic=True, fullgraph=True)
    assert torch.equal(compiled(z), t) and torch.equal(compiled(z[3:16]), t[3:16])


# ---------------------------------------------------------------- no statistics

@pytest.mark.parametrize("name", ["dyt", "dyt2d"])
def test_jacobian_is_diagonal_no_reduction_axes(name):
    """Each output depends on its own input element only: the Jacobian's off-diagonal is exactly
    zero and its diagonal is γ·α·(1 − tanh²(α·x))."""
    norm = create_norm(name, C).double()
    _random_params(norm)
    x = _input(name)
    jac = torch.autograd.functional.jacobian(norm, x).reshape(x.numel(), x.numel())
    off = jac - torch.diag(torch.diagonal(jac))
    assert torch.count_nonzero(off) == 0
    gamma = norm.weight.view(C) if name == "dyt" else norm.weight.view(C, 1, 1)
    expected = gamma * norm.alpha * (1 - torch.tanh(norm.alpha * x) ** 2)
    torch.testing.assert_close(torch.diagonal(jac), expected.reshape(-1))


def test_padding_cannot_change_real_outputs():
    norm = create_norm("dyt", C)
    _random_params(norm)
    x = _input("dyt", torch.float32)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[1, 3:] = mask[2, 1:] = True
    real = ~mask.t()
    garbage = x.clone()
    garbage[~real] = 1e4 * torch.randn(int((~real).sum()), C)
    longer = torch.cat([x, 1e3 * torch.randn(4, B, C)])
    longer_mask = torch.cat([mask, torch.ones(B, 4, dtype=torch.bool)], 1)
    y = norm(x, pad_mask=mask)
    assert torch.equal(norm(x), y)  # the mask changes nothing at all
    assert torch.equal(norm(garbage, pad_mask=mask)[real], y[real])
    assert torch.equal(norm(longer, pad_mask=longer_mask)[:T][real], y[real])


@pytest.mark.parametrize("level", ["norm", "decoder"])
def test_causal_leakage_is_exactly_zero(level):
    """float64, the insights stage's probes: nothing from positions > t reaches t, forward or
    backward, alone or inside a 2-layer causal decoder; train and eval are the same function."""
    rows = measure(Case("dyt", "dyt"), level, T=5, B=3, dim=8, prep_steps=4)
    worst = {m: max(r[m] for r in rows) for m in METRICS}
    for m in ("fwd_change", "grad_future", "bwd_change", "train_eval"):
        assert worst[m] == 0.0, f"{level}: {m} = {worst[m]}"
    # generation runs the decoder's matmuls on a shorter input: another summation order
    assert worst["train_vs_generation"] == 0.0 if level == "norm" else \
        worst["train_vs_generation"] < 1e-12


# ---------------------------------------------------------------- gradients, state, train/eval

@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name", ["dyt", "dyt2d"])
def test_gradcheck_float64(name, affine):
    norm = create_norm(name, 4, affine=affine).double()
    _random_params(norm)
    names = [n for n, _ in norm.named_parameters()]
    x = (torch.randn(3, 2, 4) if name == "dyt" else torch.randn(2, 4, 3, 3)).double()

    def fn(x, *params):
        return torch.func.functional_call(norm, dict(zip(names, params)), (x,))

    params = [p.detach().clone().requires_grad_(True) for p in norm.parameters()]
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["dyt", "dyt2d"])
def test_state_dict_round_trip_and_train_equals_eval(name, tmp_path):
    torch.manual_seed(0)
    norm = create_norm(name, C)
    opt = torch.optim.SGD(norm.parameters(), lr=0.5)
    for _ in range(3):  # move α, γ, β away from their initial values
        opt.zero_grad()
        (norm(_input(name, torch.float32)) - 1).square().mean().backward()
        opt.step()
    assert norm.alpha.item() != 0.5
    assert list(norm.buffers()) == []  # nothing but the three parameters
    torch.save(norm.state_dict(), tmp_path / "dyt.pt")
    other = create_norm(name, C)
    other.load_state_dict(torch.load(tmp_path / "dyt.pt", weights_only=True))
    x = _input(name, torch.float32, seed=5)
    y_train = norm.train()(x)
    assert torch.equal(norm.eval()(x), y_train)
    assert torch.equal(other.eval()(x), y_train)


# ---------------------------------------------------------------- in a ConvNeXt (the paper's rows)

def test_dyt2d_replaces_every_convnext_norm():
    """`model.norm: dyt2d` puts DyT where the LN arm has LayerNorm2d (stem, downsampling, blocks,
    head), as the official `convert_ln_to_dyt` does; one α more per norm, nothing else."""
    cfgs = {n: {"variant": "convnext_atto", "norm": n, "patch_size": 4, "drop_path_rate": 0.0,
                "kwargs": dict(TINY_CONVNEXT)} for n in ("dyt2d", "layer2d")}
    dyt, ln = (build_model(cfgs[n], 10, 1) for n in ("dyt2d", "layer2d"))
    assert not any(isinstance(m, nn.LayerNorm) for m in dyt.modules())
    dyt_norms, ln_norms = norm_modules(dyt), norm_modules(ln)
    assert set(dyt_norms) == {"DyT2d"} and dyt_norms["DyT2d"] == ln_norms["LayerNorm2d"]
    assert count_parameters(dyt) == count_parameters(ln) + len(dyt_norms["DyT2d"])
    dyt(torch.randn(2, 1, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in dyt.parameters())


def test_sequence_norm_in_a_convnext_is_a_config_error():
    from normrepro.config import ConfigError

    with pytest.raises(ConfigError, match="'dyt' is a sequence norm .* dyt2d"):
        build_model({"variant": "convnext_atto", "norm": "dyt", "patch_size": 4,
                     "kwargs": dict(TINY_CONVNEXT)}, 10, 1)



def test_saturation_recorder_counts_inputs_beyond_the_threshold_per_layer():
    """|α·x| ≥ 2 counted per DyT layer over every forward pass inside the block, by name; the
    hooks go away on exit; a model without DyT has no layers to record."""
    model = nn.Sequential(DyT2d(2), nn.Identity(), DyT(2))
    with torch.no_grad():
        model[0].alpha.fill_(1.0)
        model[2].alpha.fill_(0.5)
    x = torch.tensor([0.0, 1.9, 2.0, -3.0, 5.0, -0.1, 2.5, 4.1]).view(1, 2, 2, 2)
    recorder = SaturationRecorder(model)
    with recorder:
        y = model[0](x)
        model[0](x)                       # counted twice: 5 of 8 inputs each time
        model[2](x.view(2, 2, 2))         # α 0.5: |x| ≥ 4 → 2 of 8
    assert [n for n, _ in recorder.layers] == ["0", "2"]
    assert recorder.threshold == SATURATION_THRESHOLD == 2.0
    assert recorder.counts == {"0": [10, 16], "2": [2, 8]}
    assert recorder.fractions() == {"0": 10 / 16, "2": 2 / 8}
    assert not model[0]._forward_hooks and not model[2]._forward_hooks
    assert torch.equal(model[0](x), y)    # recording changes nothing
    assert SaturationRecorder(nn.Sequential(nn.LayerNorm(2))).layers == []
