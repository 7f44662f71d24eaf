"""The native CPU kernels of `rms` and `dyt` (`normrepro.norms.native`).

Their references are in test_norms.py (`test_fused_kernels_match_references_in_both_modes` runs
every norm through them, the compiled and the eager kernels). Here: they replace the compiled
kernels without changing the forward's or the input gradient's bits, they are what runs by
default on CPU in float32, and the cases at their edges.
"""

from __future__ import annotations

import pytest
import torch

from normrepro.norms import create_norm, eager_kernels, kernels, native

pytestmark = pytest.mark.skipif(
    not native.ENABLED or kernels._COMPILE_MODE in ("0", "false", "no", "off"),
    reason="native kernels turned off (NORMREPRO_NATIVE=0 or NORMREPRO_COMPILE=0)")

CASES = [("rms", (5, 7, 64), torch.contiguous_format),
         ("dyt", (5, 7, 64), torch.contiguous_format),
         ("dyt2d", (3, 64, 4, 5), torch.contiguous_format),
         ("dyt2d", (3, 64, 4, 5), torch.channels_last)]


def _run(name, shape, fmt, seed=0):
    torch.manual_seed(seed)
    C = shape[1] if name == "dyt2d" else shape[-1]
    norm = create_norm(name, C).train()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.numel() > 1 else 0.0))
    x = (3 * torch.randn(shape)).contiguous(memory_format=fmt).requires_grad_(True)
    y = norm(x)
    grads = torch.autograd.grad(y, [x] + list(norm.parameters()), torch.randn(shape))
    return y, grads


@pytest.mark.parametrize("name,shape,fmt", CASES)
def test_same_bits_as_the_compiled_kernels(name, shape, fmt, monkeypatch):
    """Output and input gradient: the same bits as the compiled kernels (the same float32
    operations in the same order); the parameters' gradients, added in another order, agree to
    float32 rounding."""
    monkeypatch.setattr(native, "RAN", set())
    y1, g1 = _run(name, shape, fmt)
    assert native.RAN == {f"{name[:3]}_fwd", f"{name[:3]}_bwd"}
    monkeypatch.setattr(native, "ENABLED", False)
    y0, g0 = _run(name, shape, fmt)
    assert torch.equal(y1, y0) and torch.equal(g1[0], g0[0])
    for a, b in zip(g1[1:], g0[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_not_used_where_it_does_not_apply(monkeypatch):
    """float64, eager_kernels() and non-contiguous inputs take the other kernels."""
    monkeypatch.setattr(native, "RAN", set())
    x = torch.randn(4, 3, 16, dtype=torch.float64)
    create_norm("rms", 16).double()(x)
    create_norm("dyt", 16).double()(x)
    with eager_kernels():
        create_norm("rms", 16)(x.float())
    assert not native.RAN
    assert not native.usable(torch.randn(16, 4).t())
    assert native.usable(torch.randn(4, 16))


def test_empty_and_single_row_inputs():
    for name, shape in [("rms", (0, 2, 16)), ("dyt", (0, 2, 16)), ("rms", (1, 1, 5)),
                        ("dyt", (1, 1, 5)), ("dyt2d", (1, 3, 1, 1))]:
        y, grads = _run(name, shape, torch.contiguous_format)
        assert y.shape == shape and all(torch.isfinite(g).all() for g in grads)
        if shape[0] == 0:
            assert all(float(g.abs().sum()) == 0.0 for g in grads[1:])


@pytest.mark.parametrize("name", ["rms", "dyt"])
def test_same_bits_for_the_same_thread_count(name):
    """Per-thread column sums are added in thread order: a rerun gives the same bits."""
    a = _run(name, (33, 17, 48), torch.contiguous_format, seed=3)
    b = _run(name, (33, 17, 48), torch.contiguous_format, seed=3)
    assert torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))
