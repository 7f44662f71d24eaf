"""Hand-written CPU kernels for `rms` and `dyt` in float32: one pass over the rows each way.

Why not the compiled kernels of `normrepro.norms.kernels` here: inductor's CPU code cannot take a
column sum (the affine parameters' gradients) in the loop that writes the input gradient, so a
backward walked the data twice (the second walk in ATen's norm-backward kernels); and a per-row
factor either is recomputed every 16 floats (a square root and a division) or, returned as an
output, splits the forward into three loops over all rows (x is read twice from memory). These
kernels walk row by row, compute a row's factor once, and add each row into per-thread column
sums kept in L1, as ATen's LayerNorm backward does. On 2 cores, (N, C) = (4096, 512) float32:

* `rms` forward 0.31 ms (compiled kernel 0.56 ms, LayerNorm 0.38 ms); backward, input and
  weight gradient, 0.63 ms (0.93 ms: kernel plus ATen's column sum; LayerNorm 0.55 ms).
* `dyt` backward on rows 0.85 ms (1.27 ms) and on (B, C, H·W) maps 0.77 ms (1.94 ms). The
  backward recomputes t = tanh(α·x) from x (the rational `_tanh`, bit for bit) instead of
  reading a saved t: same time, and DyT then keeps only x for the backward, as LayerNorm does.

**Numbers.** The forward outputs (y, the saved 1/RMS) and the input gradients are the same bits
as the compiled kernels' (same operations in the same order on the same vector width; checked
on the shapes above). The column sums (γ's and β's gradients, DyT's dα) are added in another
order than ATen's or inductor's, so they differ at float32 rounding. Per-thread partial sums are
added in thread order: the same thread count gives the same bits.

**When they run**: on CPU, float32, contiguous tensors, when the compiled kernels would run (not
under `eager_kernels()` or `NORMREPRO_COMPILE=0`, not inside torch.compile's tracing, where the
Python kernels are traced instead). Otherwise, and for float64, GPU and half precision, the
compiled or eager kernels run as before. They are compiled once per machine through inductor's
C++ toolchain and cache (`torch._inductor.codecache`, with the vector ISA it picks), which the
compiled kernels need anyway; if that fails, a warning says so and the compiled or eager
kernels take over (`NORMREPRO_COMPILE=1` makes it an error). `NORMREPRO_NATIVE=0` turns them off.
The tests run every norm through them, the compiled and the eager kernels, against references.
"""

from __future__ import annotations

import os
import warnings

import torch

from normrepro.norms import kernels

__all__ = ["usable", "rms_forward", "rms_backward", "dyt_forward", "dyt_backward"]

ENABLED = os.environ.get("NORMREPRO_NATIVE", "1").lower() not in ("0", "false", "no", "off")
_FAILED = False

# Vectorized<float> is inductor's (ATen's) SIMD wrapper: 16 floats with AVX-512, 8 with AVX2, a
# plain array without a vector ISA. `vsum` is the horizontal sum inductor's reductions end with.
_HEAD = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
using V = at::vec::Vectorized<float>;
static inline float vsum(V v) {
    return at::vec::vec_reduce_all<float, 1>([](V& a, V& b) { return a + b; }, v);
}
"""

# tanh as `normrepro.norms.dyt._tanh` computes it in float32 (constants filled in below).
_TANH = r"""
static inline V vtanh(V z) {
    z = at::vec::minimum(at::vec::maximum(z, V(-TANH_CLAMP)), V(TANH_CLAMP));
    const V s = z * z;
    const V p = (((V(P3) * s + V(P2)) * s + V(P1)) * s + V(P0)) * s + V(1.0f);
    const V q = (((V(Q3) * s + V(Q2)) * s + V(Q1)) * s + V(Q0)) * s + V(1.0f);
    return at::vec::minimum(at::vec::maximum(z * p / q, V(-1.0f)), V(1.0f));
}
"""

_SOURCES = {
    # y = x·r·w with r = 1/√(mean x² + ε) per row; r is written for the backward.
    "rms_fwd": (["const float*", "const float*", "float*", "float*", "const int64_t",
                 "const int64_t", "const int64_t", "const float"], r"""
extern "C" void kernel(const float* x, const float* w, float* y, float* rstd,
                       const int64_t N, const int64_t C, const int64_t P, const float eps)
{
    const int64_t K = V::size();
    #pragma omp parallel for schedule(static) num_threads(P)
    for (int64_t n = 0; n < N; ++n) {
        const float* xr = x + n * C;
        float* yr = y + n * C;
        V acc(0);
        int64_t c = 0;
        for (; c + K <= C; c += K) { const V v = V::loadu(xr + c); acc = acc + v * v; }
        const int64_t tail = C - c;
        if (tail) { const V v = V::loadu(xr + c, tail); acc = acc + v * v; }
        const float r = 1 / std::sqrt(vsum(acc) / static_cast<float>(C) + eps);
        rstd[n] = r;
        const V rv(r);
        for (c = 0; c + K <= C; c += K) (V::loadu(xr + c) * rv * V::loadu(w + c)).store(yr + c);
        if (tail) (V::loadu(xr + c, tail) * rv * V::loadu(w + c, tail)).store(yr + c, tail);
    }
}
"""),
    # gx = r·(g − x̂·mean(g·x̂)) with g = gy·w, x̂ = x·r; part[thread, c] += gy·x̂ (w's gradient).
    "rms_bwd": (["const float*", "const float*", "const float*", "const float*", "float*",
                 "float*", "const int64_t", "const int64_t", "const int64_t"], r"""
extern "C" void kernel(const float* gy, const float* x, const float* rstd, const float* w,
                       float* gx, float* part, const int64_t N, const int64_t C, const int64_t P)
{
    const int64_t K = V::size();
    #pragma omp parallel num_threads(P)
    {
        float* acc = part + omp_get_thread_num() * C;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            const float* gr = gy + n * C;
            const float* xr = x + n * C;
            float* outr = gx + n * C;
            const V rv(rstd[n]);
            V s(0);
            int64_t c = 0;
            for (; c + K <= C; c += K)
                s = s + V::loadu(gr + c) * V::loadu(w + c) * (V::loadu(xr + c) * rv);
            const int64_t tail = C - c;
            if (tail)
                s = s + V::loadu(gr + c, tail) * V::loadu(w + c, tail) * (V::loadu(xr + c, tail) * rv);
            const V m(vsum(s) / static_cast<float>(C));
            for (c = 0; c + K <= C; c += K) {
                const V g = V::loadu(gr + c), xh = V::loadu(xr + c) * rv;
                (rv * (g * V::loadu(w + c) - xh * m)).store(outr + c);
                (V::loadu(acc + c) + g * xh).store(acc + c);
            }
            if (tail) {
                const V g = V::loadu(gr + c, tail), xh = V::loadu(xr + c, tail) * rv;
                (rv * (g * V::loadu(w + c, tail) - xh * m)).store(outr + c, tail);
                (V::loadu(acc + c, tail) + g * xh).store(acc + c, tail);
            }
        }
    }
}
"""),
    # DyT forward: y = γ·tanh(α·x) + β. Rows (N, C) with γ, β per column (L = 0), or a
    # (B, C, L) map with γ, β per channel, row r = b·C + c.
    "dyt_fwd": (["const float*", "const float*", "const float*", "const float*", "float*",
                 "const int64_t", "const int64_t", "const int64_t", "const int64_t"], r"""
extern "C" void kernel(const float* x, const float* alpha, const float* w, const float* b,
                       float* y, const int64_t R, const int64_t C, const int64_t L,
                       const int64_t P)
{
    const int64_t K = V::size();
    const int64_t len = L ? L : C;
    const V a(alpha[0]);
    #pragma omp parallel for schedule(static) num_threads(P)
    for (int64_t r = 0; r < R; ++r) {
        const float* xr = x + r * len;
        float* yr = y + r * len;
        const int64_t ch = L ? r % C : 0;
        int64_t c = 0;
        for (; c + K <= len; c += K) {
            const V t = vtanh(a * V::loadu(xr + c));
            const V wv = L ? V(w[ch]) : V::loadu(w + c), bv = L ? V(b[ch]) : V::loadu(b + c);
            (t * wv + bv).store(yr + c);
        }
        const int64_t tail = len - c;
        if (tail) {
            const V t = vtanh(a * V::loadu(xr + c, tail));
            const V wv = L ? V(w[ch]) : V::loadu(w + c, tail), bv = L ? V(b[ch]) : V::loadu(b + c, tail);
            (t * wv + bv).store(yr + c, tail);
        }
    }
}
"""),
    # DyT backward, t recomputed from x: gz = gy·γ·(1 − t²), gx = gz·α; per thread
    # part = [Σ gy·t (C), Σ gy (C), Σ gz·x (1)], the last summed over rows in double.
    "dyt_bwd": (["const float*", "const float*", "const float*", "const float*", "float*",
                 "float*", "const int64_t", "const int64_t", "const int64_t", "const int64_t"], r"""
extern "C" void kernel(const float* gy, const float* x, const float* alpha, const float* w,
                       float* gx, float* part, const int64_t R, const int64_t C, const int64_t L,
                       const int64_t P)
{
    const int64_t K = V::size();
    const int64_t len = L ? L : C;
    const float af = alpha[0];
    const V a(af);
    #pragma omp parallel num_threads(P)
    {
        float* acc = part + omp_get_thread_num() * (2 * C + 1);
        double sum_alpha = 0;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < R; ++r) {
            const float* gr = gy + r * len;
            const float* xr = x + r * len;
            float* outr = gx + r * len;
            const int64_t ch = L ? r % C : 0;
            V s(0), sgt(0), sg(0);
            int64_t c = 0;
            for (; c < len; c += K) {
                const int64_t n = len - c < K ? len - c : K;
                const V g = V::loadu(gr + c, n), xv = V::loadu(xr + c, n);
                const V t = vtanh(a * xv);
                const V gz = g * (L ? V(w[ch]) : V::loadu(w + c, n)) * (V(1.0f) - t * t);
                (gz * a).store(outr + c, n);
                s = s + gz * xv;
                if (L) {
                    sgt = sgt + g * t;
                    sg = sg + g;
                } else {
                    (V::loadu(acc + c, n) + g * t).store(acc + c, n);
                    (V::loadu(acc + C + c, n) + g).store(acc + C + c, n);
                }
            }
            sum_alpha += vsum(s);
            if (L) {
                acc[ch] += vsum(sgt);
                acc[C + ch] += vsum(sg);
            }
        }
        acc[2 * C] = static_cast<float>(sum_alpha);
    }
}
"""),
}


def _tanh_defines() -> str:
    from normrepro.norms.dyt import _TANH_CLAMP, _TANH_P, _TANH_Q

    # (a double literal cast to float, as inductor writes Python scalars: the same float)
    consts = [(f"P{i}", v) for i, v in enumerate(_TANH_P)] + [(f"Q{i}", v) for i, v in enumerate(_TANH_Q)]
    consts.append(("TANH_CLAMP", _TANH_CLAMP))
    return "".join(f"#define {k} static_cast<float>({v!r})\n" for k, v in consts)


_LOADED: dict = {}
RAN: set[str] = set()  # kernels that have run in this process (the tests check it)


def _kernel(name: str):
    fn = _LOADED.get(name)
    if fn is None:
        from torch._inductor.codecache import CppPythonBindingsCodeCache

        argtypes, body = _SOURCES[name]
        source = _HEAD + (_tanh_defines() + _TANH if name.startswith("dyt") else "") + body
        fn = _LOADED[name] = CppPythonBindingsCodeCache.load_pybinding(argtypes, source)
    return fn


def _run(name: str, *args) -> None:
    _kernel(name)(*args)
    RAN.add(name)


def _threads() -> int:
    return max(1, torch.get_num_threads())


def usable(*tensors: torch.Tensor) -> bool:
    """True where the native kernels run for these tensors (CPU, float32, contiguous) in the
    current mode; compiles them on first use, and on failure warns and returns False from then on."""
    global _FAILED
    if not ENABLED or _FAILED or kernels._FORCE_EAGER or torch.compiler.is_compiling():
        return False
    if kernels._COMPILE_MODE in ("0", "false", "no", "off"):
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
               for t in tensors):
        return False
    if len(_LOADED) == len(_SOURCES):  # (every call of a norm asks: the common case first)
        return True
    try:
        for name in _SOURCES:
            _kernel(name)
    except Exception as exc:  # pragma: no cover - depends on the machine's toolchain
        if kernels._COMPILE_MODE in ("1", "true", "yes", "on"):
            raise
        warnings.warn(f"normrepro.norms: the native CPU kernels did not compile "
                      f"({type(exc).__name__}: {exc}); using the compiled or eager kernels "
                      "(same numbers up to float32 rounding, slower)", RuntimeWarning)
        _FAILED = True
        return False
    return True


def rms_forward(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """(y, 1/RMS of shape (N, 1)) for (N, C) rows and a (C,) weight."""
    N, C = x.shape
    y, rstd = torch.empty_like(x), x.new_empty(N, 1)
    _run("rms_fwd", x, weight, y, rstd, N, C, _threads(), float(eps))
    return y, rstd


def rms_backward(gy, x, rstd, weight):
    """(input gradient, weight gradient) from the forward's 1/RMS."""
    N, C = x.shape
    P = _threads()
    gx, part = torch.empty_like(x), x.new_zeros(P, C)
    _run("rms_bwd", gy, x, rstd, weight, gx, part, N, C, P)
    return gx, part.sum(0)


def _layout(x: torch.Tensor) -> tuple[int, int, int]:
    """(rows R, channels C, row length L) with L = 0 for (N, C) rows (γ per column)."""
    if x.dim() == 2:
        return x.shape[0], x.shape[1], 0
    B, C, L = x.shape
    return B * C, C, L


def dyt_forward(x, alpha, weight, bias):
    """γ·tanh(α·x) + β on (N, C) rows (γ, β of shape (C,)) or a (B, C, L) map (γ, β (C, 1))."""
    R, C, L = _layout(x)
    y = torch.empty_like(x)
    if y.numel():
        _run("dyt_fwd", x, alpha, weight, bias, y, R, C, L, _threads())
    return y


def dyt_backward(gy, x, alpha, weight):
    """(gx, dα of shape (1,), dγ, dβ of shape (C,))."""
    R, C, L = _layout(x)
    P = _threads()
    gx, part = torch.empty_like(x), x.new_zeros(P, 2 * C + 1)
    if gx.numel():
        _run("dyt_bwd", gy, x, alpha, weight, gx, part, R, C, L, P)
    s = part.sum(0)
    return gx, s[2 * C:], s[:C], s[C:2 * C]
