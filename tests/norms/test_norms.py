"""Tests of the norm registry: axes, padding invariance, train/eval, state, gradients, and a
step-by-step reference of the official PowerNorm (and its equivalence with the paper's Alg. 2)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from normrepro.norms import (IMAGE_NORMS, NORM_NAMES, SEQUENCE_NORMS, create_norm,
                             get_norm_layer, is_sequence_norm)

T, B, C = 6, 4, 8


def _mask(seed=0, T=T, B=B, p=0.3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < p
    mask[:, 0] = False  # every sentence has a real token
    return mask


def _run(norm, x, mask=None):
    return norm(x, pad_mask=mask) if isinstance(norm, tuple(SEQUENCE_NORMS.values())) else norm(x)


# ---------------------------------------------------------------- registry and input checks

def test_registry_names():
    for name in ["layer", "batch", "batch_unmasked", "sync_batch", "power_vanilla", "power", "rms",
                 "group", "instance", "layer2d", "batch2d", "sync_batch2d", "group2d", "instance2d"]:
        assert name in NORM_NAMES
    assert set(NORM_NAMES) == set(SEQUENCE_NORMS) | set(IMAGE_NORMS)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*layer.*power"):
        create_norm("layernorm", 8)


def test_unknown_kwarg_is_an_error():
    with pytest.raises(ValueError, match="warmup_iter"):
        create_norm("power", 8, warmup_iter=10)


def test_get_norm_layer_factory_honours_eps():
    factory = get_norm_layer("layer2d")
    norm = factory(16, eps=1e-3)
    assert norm.eps == 1e-3 and norm.num_features == 16


@pytest.mark.parametrize("name", sorted(SEQUENCE_NORMS))
def test_sequence_norm_rejects_bad_shapes(name):
    norm = create_norm(name, C)
    with pytest.raises(ValueError, match=r"\(T, B, C\)"):
        norm(torch.randn(B, C, 5, 5))
    with pytest.raises(ValueError, match="C=8 channels but the input has C=7"):
        norm(torch.randn(T, B, 7))
    with pytest.raises(ValueError, match="pad_mask must have shape"):
        norm(torch.randn(T, B, C), pad_mask=torch.zeros(T, B, dtype=torch.bool))


@pytest.mark.parametrize("name", sorted(IMAGE_NORMS))
def test_image_norm_rejects_bad_shapes(name):
    norm = create_norm(name, C)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        norm(torch.randn(T, B, C))
    with pytest.raises(ValueError, match="C=8 channels but the input has C=4"):
        norm(torch.randn(2, 4, 3, 3))


# ---------------------------------------------------------------- reduction axes

def _changed(name, x, idx, mask=None, **kw):
    torch.manual_seed(0)
    norm = create_norm(name, x.shape[-1] if is_sequence_norm(name) else x.shape[1], **kw).train()
    ref = copy.deepcopy(norm)
    with torch.no_grad():
        y0 = _run(ref, x, mask)
        x1 = x.clone()
        x1[idx] += 3.0
        y1 = _run(norm, x1, mask)
    return (y1 - y0).abs() > 1e-6


def _seq_expect(name, t0, b0, c0, mask, groups=2):
    exp = torch.zeros(T, B, C, dtype=torch.bool)
    real = ~mask.t()  # (T, B)
    gsize = C // groups
    gch = slice(c0 // gsize * gsize, c0 // gsize * gsize + gsize)
    if name in ("layer", "rms"):
        exp[t0, b0, :] = True
    elif name == "dyt":  # element-wise
        exp[t0, b0, c0] = True
    elif name == "group":
        exp[t0, b0, gch] = True
    elif name == "instance":
        exp[:, b0, c0] = real[:, b0]
    elif name in ("batch", "sync_batch", "power_vanilla"):  # sync_batch: no process group here
        exp[:, :, c0] = real
    elif name == "batch_unmasked":  # padding counted and not zeroed: every position moves
        exp[:, :, c0] = True
    elif name == "bn_official":
        # The token's root-mean-square scaling touches all its channels; every channel's batch
        # statistics then move, and so does every real token. Padding holds the real mean, which
        # is the batch mean, so it always comes out as the bias.
        exp[:, :, :] = real.unsqueeze(-1)
    elif name == "power":
        # GroupScaling mixes the token's own group; ψ²_B then spreads each of those channels to
        # every token (padding included: upstream does not mask PN's output).
        exp[:, :, gch] = True
    return exp


@pytest.mark.parametrize("name", sorted(SEQUENCE_NORMS))
def test_sequence_norm_reduces_over_its_own_axes(name):
    mask = _mask(1)
    kw = {"num_groups": 2} if name == "group" else {"group_num": 2} if name == "power" else {}
    x = torch.randn(T, B, C, generator=torch.Generator().manual_seed(2))
    t0, b0, c0 = 0, 1, 5
    changed = _changed(name, x, (t0, b0, c0), mask, **kw)
    expected = _seq_expect(name, t0, b0, c0, mask)
    assert torch.equal(changed, expected), f"{name}: changed positions differ from its axes"


@pytest.mark.parametrize("name", sorted(IMAGE_NORMS))
def test_image_norm_reduces_over_its_own_axes(name):
    x = torch.randn(3, C, 4, 5, generator=torch.Generator().manual_seed(3))
    b0, c0, h0, w0 = 1, 5, 2, 3
    changed = _changed(name, x, (b0, c0, h0, w0), num_groups=2) if name == "group2d" else \
        _changed(name, x, (b0, c0, h0, w0))
    exp = torch.zeros_like(changed)
    if name == "layer2d":
        exp[b0, :, h0, w0] = True
    elif name in ("batch2d", "sync_batch2d"):  # sync_batch2d: no process group here
        exp[:, c0] = True
    elif name == "group2d":
        exp[b0, 4:8] = True
    elif name == "instance2d":
        exp[b0, c0] = True
    elif name == "dyt2d":  # element-wise
        exp[b0, c0, h0, w0] = True
    assert torch.equal(changed, exp)


# ---------------------------------------------------------------- padding invariance

@pytest.mark.parametrize("name", ["batch", "sync_batch", "power_vanilla", "power", "instance",
                                  "layer"])
def test_padding_changes_neither_statistics_nor_real_outputs(name):
    torch.manual_seed(0)
    mask = _mask(4)
    x = torch.randn(T, B, C)
    x_garbage = x.clone()
    x_garbage[mask.t()] = 1e3 * torch.randn(int(mask.sum()), C)
    # A longer batch: two extra all-padding time steps.
    x_long = torch.cat([x, 50 * torch.randn(2, B, C)], 0)
    mask_long = torch.cat([mask, torch.ones(B, 2, dtype=torch.bool)], 1)
    base = create_norm(name, C, **({"warmup_iters": 3} if name == "power" else {})).train()
    outs, bufs = [], []
    for xi, mi in [(x, mask), (x_garbage, mask), (x_long, mask_long)]:
        norm = copy.deepcopy(base)
        for _ in range(5):  # crosses PowerNorm's warm-up
            y = norm(xi, pad_mask=mi)
        outs.append(y[: T][~mask.t()])
        bufs.append({k: v.clone() for k, v in norm.named_buffers()})
    for y, b in zip(outs[1:], bufs[1:]):
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-5)
        for k in b:
            torch.testing.assert_close(b[k], bufs[0][k], rtol=1e-5, atol=1e-6)


def test_masked_batchnorm_equals_batchnorm_on_real_tokens(T=T, B=B):
    torch.manual_seed(0)
    mask = _mask(5, T=T, B=B)
    x = torch.randn(T, B, C, dtype=torch.float64, requires_grad=True)
    norm = create_norm("batch", C, momentum=0.2).double().train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    ref = torch.nn.BatchNorm1d(C, momentum=0.2).double().train()
    ref.load_state_dict({k: v for k, v in norm.state_dict().items()})
    xr = x.detach().clone().requires_grad_(True)
    real = ~mask.t()
    gy = torch.randn(T, B, C, dtype=torch.float64)
    y = norm(x, pad_mask=mask)
    y.backward(gy)
    yr = ref(xr[real])
    yr.backward(gy[real])
    torch.testing.assert_close(y[real], yr)
    assert torch.all(y[~real] == 0)
    torch.testing.assert_close(x.grad[real], xr.grad[real])
    assert torch.all(x.grad[~real] == 0)
    torch.testing.assert_close(norm.weight.grad, ref.weight.grad)
    torch.testing.assert_close(norm.bias.grad, ref.bias.grad)
    torch.testing.assert_close(norm.running_mean, ref.running_mean)
    torch.testing.assert_close(norm.running_var, ref.running_var)


@pytest.mark.parametrize("name", sorted(SEQUENCE_NORMS))
def test_all_padding_batch_gives_no_nan(name):
    norm = create_norm(name, C).train()
    before = {k: v.clone() for k, v in norm.named_buffers() if k not in ("iters", "num_batches_tracked")}
    x = torch.randn(T, B, C, requires_grad=True)
    y = norm(x, pad_mask=torch.ones(B, T, dtype=torch.bool))
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    if name == "batch_unmasked":  # padding is data to it: its running statistics move
        return
    for k, v in before.items():
        if k != "ema_gz":
            torch.testing.assert_close(dict(norm.named_buffers())[k], v)


# ---------------------------------------------------------------- train / eval and state

@pytest.mark.parametrize("name", ["batch", "power_vanilla", "power"])
def test_eval_uses_running_statistics_and_is_per_token(name):
    torch.manual_seed(0)
    norm = create_norm(name, C, **({"warmup_iters": 2} if name == "power" else {})).train()
    for _ in range(60):
        norm(3 + 2 * torch.randn(4 * T, 4 * B, C), pad_mask=_mask(0, T=4 * T, B=4 * B))
    norm.eval()
    buffers = {k: v.clone() for k, v in norm.named_buffers()}
    x = 3 + 2 * torch.randn(T, B, C)
    y = norm(x)
    # Eval does not touch the state, and a token's output does not depend on the others.
    for k, v in norm.named_buffers():
        assert torch.equal(v, buffers[k])
    torch.testing.assert_close(norm(x[:1, :1]), y[:1, :1])
    if name == "batch":  # running stats have converged to the data distribution
        torch.testing.assert_close(norm.running_mean, torch.full((C,), 3.0), atol=0.2, rtol=0)
        torch.testing.assert_close(norm.running_var, torch.full((C,), 4.0), atol=0.8, rtol=0)


@pytest.mark.parametrize("name", sorted(NORM_NAMES))
def test_state_dict_round_trip(name, tmp_path):
    torch.manual_seed(0)
    seq = is_sequence_norm(name)
    norm = create_norm(name, C).train()
    for _ in range(3):
        x = torch.randn(T, B, C) if seq else torch.randn(3, C, 4, 4)
        y = _run(norm, x, _mask(1) if seq else None)
        y.sum().backward()
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save(norm.state_dict(), tmp_path / "n.pt")
    other = create_norm(name, C)
    other.load_state_dict(torch.load(tmp_path / "n.pt", weights_only=True))
    norm.eval(), other.eval()
    x = torch.randn(T, B, C) if seq else torch.randn(3, C, 4, 4)
    torch.testing.assert_close(_run(other, x), _run(norm, x))


@pytest.mark.parametrize("name", sorted(set(NORM_NAMES) - {"power"}))
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    seq = is_sequence_norm(name)
    norm = create_norm(name, 4, **({"num_groups": 2} if "group" in name else {})).double().train()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    x = (torch.randn(3, 2, 4) if seq else torch.randn(2, 4, 3, 3)).double().requires_grad_(True)
    mask = torch.tensor([[False, False, True], [False, True, True]]) if seq else None
    names = [n for n, _ in norm.named_parameters()]

    def fn(x, *ps):
        state = copy.deepcopy(norm)  # running statistics must not drift between evaluations
        args = (x, mask) if seq else (x,)
        return torch.func.functional_call(state, dict(zip(names, ps)), args)

    params = [p.detach().clone().requires_grad_(True) for p in norm.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *params),
                                    eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- PowerNorm vs a reference

class RefPowerNorm:
    """Straightforward float64 transcription of the official MaskPowerNorm (loops over steps,
    plain tensor ops, GroupScaling through autograd, PowerFunction's backward by hand)."""

    def __init__(self, C, group_num, warmup_iters, alpha_fwd, alpha_bkw, eps, weight, bias):
        self.C, self.G, self.warm = C, group_num, warmup_iters
        self.afwd, self.abkw, self.eps = alpha_fwd, alpha_bkw, eps
        self.weight, self.bias = weight.clone(), bias.clone()
        self.running_phi = torch.ones(C, dtype=torch.float64)
        self.ema_gz = torch.zeros(C, dtype=torch.float64)
        self.iters = 0

    def group_scale(self, x):  # x (T, B, C), autograd
        T, B, C = x.shape
        g = x.reshape(T, B, self.G, C // self.G)
        m2 = (g * g).mean(dim=3, keepdim=True)
        return (g / torch.sqrt(m2 + self.eps)).reshape(T, B, C)

    def step(self, x, pad_mask, grad_y):
        """One training step: returns y, grad_x, grad_weight, grad_bias."""
        x = x.detach().clone().requires_grad_(True)
        self.iters += 1
        t = self.iters
        xs = self.group_scale(x)
        real_rows = [xs[i, j] for i in range(xs.shape[0]) for j in range(xs.shape[1])
                     if not pad_mask[j, i]]
        psi_b = torch.stack(real_rows).detach().pow(2).mean(0)
        phi = psi_b if t <= self.warm else self.running_phi.clone()
        z = xs.detach() / torch.sqrt(phi + self.eps)
        y = self.weight * z + self.bias
        if t < self.warm:
            self.running_phi = self.running_phi * (t - 1) / t + psi_b / t
        self.running_phi = self.afwd * self.running_phi + (1 - self.afwd) * psi_b
        # backward of PowerFunction
        g = grad_y * self.weight
        approx = g - (1 - self.abkw) * self.ema_gz * z
        self.ema_gz = self.ema_gz + (approx * z).reshape(-1, self.C).mean(0)
        gxs = approx / torch.sqrt(psi_b + self.eps)
        gw = (grad_y * z).reshape(-1, self.C).sum(0)
        gb = grad_y.reshape(-1, self.C).sum(0)
        xs.backward(gxs)
        return y, x.grad, gw, gb, psi_b, z


def _pn_setup(seed=0, warmup=7):
    torch.manual_seed(seed)
    Cp, G = 8, 2
    norm = create_norm("power", Cp, warmup_iters=warmup, group_num=G, alpha_fwd=0.9,
                       alpha_bkw=0.8).double().train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    ref = RefPowerNorm(Cp, G, warmup, 0.9, 0.8, 1e-5, norm.weight.detach(), norm.bias.detach())
    return norm, ref, Cp


def test_power_matches_official_reference_step_by_step(B=B):
    norm, ref, Cp = _pn_setup()
    gen = torch.Generator().manual_seed(11)
    for step in range(25):  # warm-up is 7 steps: covers before, at and after it
        Tn = int(torch.randint(3, 8, (1,), generator=gen))
        x = (1 + step / 10) * torch.randn(Tn, B, Cp, generator=gen, dtype=torch.float64) + 0.5
        mask = torch.rand(B, Tn, generator=gen) < 0.35
        mask[:, 0] = False
        gy = torch.randn(Tn, B, Cp, generator=gen, dtype=torch.float64)
        xr = x.clone().requires_grad_(True)
        norm.zero_grad()
        y = norm(xr, pad_mask=mask)
        y.backward(gy)
        y_ref, gx_ref, gw_ref, gb_ref, _, _ = ref.step(x, mask, gy)
        torch.testing.assert_close(y, y_ref, msg=f"output, step {step + 1}")
        torch.testing.assert_close(xr.grad, gx_ref, msg=f"input grad, step {step + 1}")
        torch.testing.assert_close(norm.weight.grad, gw_ref, msg=f"weight grad, step {step + 1}")
        torch.testing.assert_close(norm.bias.grad, gb_ref, msg=f"bias grad, step {step + 1}")
        torch.testing.assert_close(norm.running_phi, ref.running_phi, msg=f"running_phi, step {step + 1}")
        torch.testing.assert_close(norm.ema_gz, ref.ema_gz, msg=f"ema_gz, step {step + 1}")
        assert int(norm.iters) == step + 1
    # and eval uses group scaling and the running statistic
    norm.eval()
    x = torch.randn(4, B, Cp, dtype=torch.float64)
    with torch.no_grad():
        expect = norm.weight * ref.group_scale(x) / torch.sqrt(ref.running_phi + 1e-5) + norm.bias
    torch.testing.assert_close(norm(x), expect)


def test_power_equals_paper_algorithm2_reparametrisation():
    """ν_t = ν_{t−1}(1 − (1−α)Γ_t) + (1−α)Λ_t with Γ = mean z², Λ = mean g·z equals
    (1−α)·ema_gz, and the input gradient is (g − ν_{t−1} z)/ψ_B through GroupScaling."""
    norm, ref, Cp = _pn_setup(seed=3, warmup=5)
    alpha = norm.alpha_bkw
    nu = torch.zeros(Cp, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    for step in range(20):
        x = torch.randn(5, B, Cp, generator=gen, dtype=torch.float64)
        mask = _mask(step, T=5)
        gy = torch.randn(5, B, Cp, generator=gen, dtype=torch.float64)
        xr = x.clone().requires_grad_(True)
        y = norm(xr, pad_mask=mask)
        y.backward(gy)
        # Algorithm 2 with the official code's choices (z from the forward, ψ_B in backward)
        _, _, _, _, psi_b, z = ref.step(x, mask, gy)
        g = gy * norm.weight.detach()
        gtilde = g - nu * z
        xs_in = x.clone().requires_grad_(True)
        ref.group_scale(xs_in).backward(gtilde / torch.sqrt(psi_b + 1e-5))
        torch.testing.assert_close(xr.grad, xs_in.grad, msg=f"grad, step {step + 1}")
        Gamma = (z * z).reshape(-1, Cp).mean(0)
        Lam = (g * z).reshape(-1, Cp).mean(0)
        nu = nu * (1 - (1 - alpha) * Gamma) + (1 - alpha) * Lam
        torch.testing.assert_close((1 - alpha) * norm.ema_gz, nu, msg=f"nu, step {step + 1}")


def test_power_backward_statistics_include_padding_as_upstream():
    """ema_gz averages over all B×T positions (padding included): the documented difference."""
    norm, _, Cp = _pn_setup(seed=1)
    x = torch.randn(T, B, Cp, dtype=torch.float64)
    mask = _mask(2)
    n1 = copy.deepcopy(norm)
    n1(x, pad_mask=mask).backward(torch.ones(T, B, Cp, dtype=torch.float64))
    gy = torch.ones(T, B, Cp, dtype=torch.float64)
    gy[mask.t()] = 5.0  # gradient arriving at padding positions
    n2 = copy.deepcopy(norm)
    n2(x, pad_mask=mask).backward(gy)
    assert not torch.allclose(n1.ema_gz, n2.ema_gz)


# ---------------------------------------------------------------- fused kernels: both paths

@pytest.fixture(params=["native", "compiled", "eager"])
def kernel_mode(request, monkeypatch):
    """Run a test through the native CPU kernels of `rms` and `dyt` (float32) with the
    torch.compile'd kernels for the rest, through the compiled kernels only, and through the
    eager fallback."""
    from normrepro.norms import kernels, native

    if request.param != "native":
        monkeypatch.setattr(native, "ENABLED", False)
    if request.param == "eager":
        for k in kernels._KERNELS:
            monkeypatch.setattr(k, "_failed", True)
    elif kernels._COMPILE_MODE in ("0", "false", "no", "off"):
        pytest.skip("NORMREPRO_COMPILE=0")
    elif request.param == "native" and not native.ENABLED:
        pytest.skip("NORMREPRO_NATIVE=0")
    monkeypatch.setattr(native, "RAN", set())
    return request.param


# (T, B) of the reference tests: the module's small batch (N = T*B < 32: plain column sums), one
# whose N = 63 takes the blocked column sums of the compiled kernels with a partial block, and
# one whose T = 19 does the same for the sums over time (instance norm, blocks of 8 steps).
REF_SHAPES = [(T, B), (9, 7), (19, 3)]


def _ref_per_token_and_instance(name, x, mask, weight, bias, groups=2, eps=1e-5):
    """Float64 references written with plain autograd ops (or torch's own group_norm)."""
    Tn, Bn, Cn = x.shape
    if name == "rms":
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
        return y * weight if weight is not None else y
    if name == "group":
        return F.group_norm(x.reshape(Tn * Bn, Cn), groups, weight, bias, eps).reshape(Tn, Bn, Cn)
    real = (~mask).t().unsqueeze(-1).double()  # instance: per sentence over its real tokens
    n = real.sum(0, keepdim=True).clamp_min(1.0)
    mean = (x * real).sum(0, keepdim=True) / n
    var = (((x - mean) * real) ** 2).sum(0, keepdim=True) / n
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight + bias
    return y * real


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name", ["rms", "group", "instance"])
def test_per_token_and_instance_norms_match_references(name, affine, T=T, B=B):
    torch.manual_seed(0)
    mask = _mask(6, T=T, B=B)
    mask[-1, :] = True  # a sentence of padding only: zero output and gradient, no NaN
    kw = {"num_groups": 2} if name == "group" else {}
    norm = create_norm(name, C, affine=affine, **kw).double().train()
    params = [p for p in norm.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.rand_like(p) + 0.5 if p is norm.weight else torch.randn_like(p))
    x = (2 * torch.randn(T, B, C, dtype=torch.float64) + 0.5).requires_grad_(True)
    gy = torch.randn(T, B, C, dtype=torch.float64)
    y = norm(x, pad_mask=mask)
    grads = torch.autograd.grad(y, [x] + params, gy)
    xr = x.detach().clone().requires_grad_(True)
    pr = [p.detach().clone().requires_grad_(True) for p in params]
    weight = pr[0] if affine else None
    bias = pr[1] if affine and len(pr) > 1 else None
    yr = _ref_per_token_and_instance(name, xr, mask, weight, bias)
    grads_r = torch.autograd.grad(yr, [xr] + pr, gy)
    torch.testing.assert_close(y, yr)
    for g, gr in zip(grads, grads_r):
        torch.testing.assert_close(g, gr)
    assert torch.isfinite(torch.stack([g.abs().sum() for g in grads])).all()


def test_dyt_matches_reference(T=T, B=B):
    """`dyt` and `dyt2d` (NCHW and channels-last maps), with and without γ, β: output and every
    gradient against γ·tanh(α·x) + β written with torch.tanh, in float64 (the kernels use
    torch.tanh there) and float32 (their rational tanh; the sums in float32)."""
    cases = [("dyt", (T, B, C), torch.contiguous_format),
             ("dyt2d", (B, C, 3, T), torch.contiguous_format),
             ("dyt2d", (B, C, 3, T), torch.channels_last)]
    for (name, shape, fmt), affine, dtype in itertools.product(cases, (True, False),
                                                             (torch.float64, torch.float32)):
        torch.manual_seed(0)
        norm = create_norm(name, C, affine=affine).to(dtype)
        with torch.no_grad():
            for p in norm.parameters():
                p.copy_(torch.randn_like(p))
        x = (3 * torch.randn(shape, dtype=dtype)).contiguous(memory_format=fmt).requires_grad_(True)
        gy = torch.randn(shape, dtype=dtype)
        params = list(norm.parameters())
        y = norm(x)
        grads = torch.autograd.grad(y, [x] + params, gy)
        assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
        xr = x.detach().double().requires_grad_(True)
        pr = [p.detach().double().requires_grad_(True) for p in params]
        view = (C,) if name == "dyt" else (C, 1, 1)
        yr = torch.tanh(pr[0] * xr)
        if affine:
            yr = yr * pr[1].view(view) + pr[2].view(view)
        grads_r = torch.autograd.grad(yr, [xr] + pr, gy.double())
        if dtype == torch.float64:
            torch.testing.assert_close(y, yr)
            for g, gr in zip(grads, grads_r):
                torch.testing.assert_close(g, gr)
        else:  # float32: a few ulp per element; sums of ~100 terms
            torch.testing.assert_close(y.double(), yr, rtol=1e-6, atol=1e-6)
            for g, gr in zip(grads, grads_r):
                torch.testing.assert_close(g.double(), gr, rtol=1e-5, atol=1e-5)


def test_fused_kernels_match_references_in_both_modes(kernel_mode):
    from normrepro.norms import kernels

    for Tn, Bn in REF_SHAPES:
        test_masked_batchnorm_equals_batchnorm_on_real_tokens(T=Tn, B=Bn)
        test_power_matches_official_reference_step_by_step(B=Bn)
        test_bn_official_matches_the_released_code_step_by_step(T=Tn, B=Bn)
        for name in ("rms", "group", "instance"):
            for affine in (True, False):
                test_per_token_and_instance_norms_match_references(name, affine, T=Tn, B=Bn)
        test_dyt_matches_reference(T=Tn, B=Bn)
        test_rms_float32_matches_reference(T=Tn, B=Bn)
    test_power_equals_paper_algorithm2_reparametrisation()
    if kernel_mode == "compiled":  # the compiled path really ran (no silent eager fallback)
        inactive = [k.fn.__name__ for k in kernels._KERNELS if not k.active]
        assert not inactive, f"kernels that fell back to eager: {inactive}"
    if kernel_mode == "native":  # every native kernel ran (float32 rms and dyt)
        from normrepro.norms import native

        assert native.RAN == set(native._SOURCES), native.RAN
    else:
        from normrepro.norms import native

        assert not native.RAN


def test_rms_float32_matches_reference(T=T, B=B):
    """`rms` in float32 (the native kernels on CPU, else the compiled or eager ones): output and
    gradients against the float64 reference, with and without a weight."""
    for affine in (True, False):
        torch.manual_seed(1)
        norm = create_norm("rms", C, affine=affine).train()
        params = list(norm.parameters())
        with torch.no_grad():
            for p in params:
                p.copy_(torch.rand_like(p) + 0.5)
        x = (2 * torch.randn(T, B, C) + 0.5).requires_grad_(True)
        gy = torch.randn(T, B, C)
        y = norm(x)
        grads = torch.autograd.grad(y, [x] + params, gy)
        xr = x.detach().double().requires_grad_(True)
        pr = [p.detach().double().requires_grad_(True) for p in params]
        yr = _ref_per_token_and_instance("rms", xr, None, pr[0] if affine else None, None)
        grads_r = torch.autograd.grad(yr, [xr] + pr, gy.double())
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), yr, rtol=1e-6, atol=1e-6)
        for g, gr in zip(grads, grads_r):
            torch.testing.assert_close(g.double(), gr, rtol=1e-5, atol=1e-5)


def test_colsum_blocks_equal_a_plain_sum():
    """The compiled column sum (blocks of 16 rows, then a partial block) at the sizes where its
    branches change: below 32 rows, a whole number of blocks, and a partial last block."""
    from normrepro.norms import kernels

    fn = torch.compile(lambda t: kernels._colsum(t * 2.0), fullgraph=True)
    for N in (5, 31, 32, 48, 63, 100):
        t = torch.randn(N, 24, dtype=torch.float64)
        torch._dynamo.maybe_mark_dynamic(t, 0)
        torch.testing.assert_close(fn(t), 2.0 * t.sum(0))
    fn8 = torch.compile(lambda t: kernels._colsum(t * 2.0, block=8), fullgraph=True)
    for T_ in (3, 15, 16, 19, 40):
        t = torch.randn(T_, 3, 24, dtype=torch.float64)
        torch._dynamo.maybe_mark_dynamic(t, 0)
        torch.testing.assert_close(fn8(t), 2.0 * t.sum(0))


def test_get_norm_layer_works_as_timm_norm_layer():
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3, conv_mlp=True,
                              norm_layer=get_norm_layer("batch2d"))
    kinds = {type(m).__name__ for m in model.modules() if type(m).__name__.endswith(("Norm", "Norm2d"))}
    assert kinds == {"BatchNorm2d"}
    norm = get_norm_layer("layer")(8, device="cpu", dtype=torch.float64)
    assert norm.weight.dtype == torch.float64


# ---------------------------------------------------------------- bn_official vs the released code

class RefOfficialBN:
    """Float64 transcription, op by op, of the released PowerNorm code's `batch` norm
    (sIncerass/powernorm, fairseq/modules/norms/mask_syncbatchnorm.py, MaskSyncBatchNorm with
    its LayerScaling1D; single process, so `need_sync` is False there too), written independently
    of `normrepro.norms.OfficialBatchNorm`: index assignment of the real-token mean into a
    clone, as the original does, and F.batch_norm over the T*B rows."""

    def __init__(self, C, momentum=0.05, eps=1e-5, scale_eps=1e-5):
        self.weight = torch.ones(C, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(C, dtype=torch.float64, requires_grad=True)
        self.running_mean = torch.zeros(C, dtype=torch.float64)
        self.running_var = torch.ones(C, dtype=torch.float64)
        self.momentum, self.eps, self.scale_eps = momentum, eps, scale_eps

    def __call__(self, inp, pad_mask, training=True):
        second_moment = torch.mean(inp * inp, dim=2, keepdim=True)
        inp = inp / torch.sqrt(second_moment + self.scale_eps)
        T, B, C = inp.shape
        keep = (~pad_mask).transpose(0, 1)  # True at real tokens, (T, B)
        n_pad = int((~keep).sum())
        filled = inp.clone()
        filled[~keep, :] = inp[keep, :].mean(dim=0).clone().unsqueeze(0).repeat(n_pad, 1)
        rows = filled.contiguous().view(T * B, C)
        out = F.batch_norm(rows, self.running_mean, self.running_var, self.weight, self.bias,
                           training, self.momentum, self.eps)
        return out.view(T, B, C)


def test_bn_official_matches_the_released_code_step_by_step(T=T, B=B):
    torch.manual_seed(3)
    ours = create_norm("bn_official", C).double().train()
    ref = RefOfficialBN(C)
    with torch.no_grad():
        w, b = torch.rand(C, dtype=torch.float64) + 0.5, torch.randn(C, dtype=torch.float64)
        ours.weight.copy_(w), ours.bias.copy_(b)
        ref.weight.copy_(w), ref.bias.copy_(b)
    assert ours.momentum == 0.05 and ours.scale_eps == 1e-5
    for step in range(6):
        mask = _mask(10 + step, T=T, B=B, p=0.4)
        x = (3 * torch.randn(T, B, C, dtype=torch.float64) + 1).requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        gy = torch.randn(T, B, C, dtype=torch.float64)
        y, yr = ours(x, pad_mask=mask), ref(xr, mask)
        y.backward(gy)
        yr.backward(gy)
        torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)  # padding positions too
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
        for p in (ours.weight, ours.bias, ref.weight, ref.bias):
            p.grad = None
    assert int(ours.num_batches_tracked) == 6
    # eval: the running statistics, after the same scaling and padding fill
    ours.eval()
    mask = _mask(99, T=T, B=B, p=0.4)
    x = torch.randn(T, B, C, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, pad_mask=mask), ref(x, mask, training=False))


def test_bn_official_differs_from_textbook_masked_bn():
    """Guards the arm split: `bn` (released code) and `bn_masked` (textbook) are different norms."""
    torch.manual_seed(0)
    mask = _mask(7, p=0.4)
    x = 2 * torch.randn(T, B, C) + 0.5
    a = create_norm("bn_official", C).train()(x, pad_mask=mask)
    b = create_norm("batch", C).train()(x, pad_mask=mask)
    real = ~mask.t()
    assert (a[real] - b[real]).abs().max() > 1e-2
