"""Winograd convolution F(m x m, 3 x 3) for 3x3, stride-1, "SAME" convolutions, NHWC.

Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", §4:
an output tile Y (m x m) of the correlation of an input tile d ((m+2) x (m+2))
with a 3x3 kernel g is

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,

so the (m+2)^2 elementwise products, summed over input channels, become
(m+2)^2 independent matmuls (tiles x C_in) @ (C_in x C_out). The kernel
transform U = G g G^T depends only on the weights: `transform_kernel` makes it
once, when a model is loaded, and `conv` takes it ready-made. m = 2 multiplies
2.25x fewer times than the direct convolution, m = 4 4x fewer; both add
transforms of the input and output that are cheap elementwise work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .batched_matmul import batched_matmul

# Lavin & Gray 2016, §4.1 (F(2x2, 3x3)) and §4.2 (F(4x4, 3x3), points 0, ±1, ±2, ∞).
_MATRICES = {
    2: dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: dict(
        BT=[
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        G=[
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
TILES = tuple(_MATRICES)


def _matrix(m: int, name: str) -> np.ndarray:
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile m={m} is not supported; valid: {', '.join(map(str, TILES))}")
    return np.array(_MATRICES[m][name], np.float64)


def transform_kernel(kernel, m: int):
    """U = G g G^T for each (in, out) pair: (3, 3, I, O) HWIO -> (m+2, m+2, I, O).

    A host (numpy) kernel is transformed by one BLAS product in its dtype (at
    least float32): a float32 kernel within ~1e-7 relative of the exact U, at a
    quarter of float64's time when a cifar10 model loads; a jax array (an
    initialiser's output, traced) is transformed in its own dtype.
    """
    if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
        raise ValueError(f"expected a 3x3 HWIO kernel (3, 3, I, O), got shape {kernel.shape}")
    G = _matrix(m, "G")
    if isinstance(kernel, jax.Array):
        G = G.astype(kernel.dtype)
        return jnp.einsum("ik,jl,klab->ijab", G, G, kernel, precision="highest")
    # U[i, j] = sum_kl G[i, k] G[j, l] g[k, l]: one BLAS product of kron(G, G) with the 9 taps
    # (np.einsum's three-operand loop took 3.2 s of a cifar10 model's load).
    dtype = np.promote_types(kernel.dtype, np.float32)
    taps = kernel.reshape(9, -1).astype(dtype, copy=False)
    u = np.kron(G, G).astype(dtype) @ taps
    return u.reshape(m + 2, m + 2, *kernel.shape[2:]).astype(kernel.dtype, copy=False)


def _combine(rows, parts):
    """[sum_k rows[i][k] * parts[k] for each row i], skipping zero coefficients."""
    out = []
    for row in rows:
        terms = [(c, p) for c, p in zip(row, parts) if c]
        acc = terms[0][1] if terms[0][0] == 1 else terms[0][0] * terms[0][1]
        for c, p in terms[1:]:
            acc = acc + p if c == 1 else acc - p if c == -1 else acc + c * p
        out.append(acc)
    return out


def conv(x: jax.Array, u: jax.Array, m: int, *, dot_dtype=None, padded: bool = False) -> jax.Array:
    """3x3 stride-1 "SAME" correlation of x (n, H, W, I) with U = `transform_kernel(g, m)`
    (`padded`: x is (n, H+2, W+2, I), the input with its zero border already around it).

    H and W must be multiples of m. The transforms run in x's dtype and the
    (m+2)^2 matmuls as one `batched_matmul` (ddpm_jax's CPU kernel once it is
    ready, else XLA's batched dot); with `dot_dtype` (bfloat16) its operands
    are cast to it and it accumulates in x's dtype. Returns
    (n, H, W, O) in x's dtype, no bias.
    """
    n, h, w, _ = x.shape
    if padded:
        h, w = h - 2, w - 2
    a = m + 2
    if h % m or w % m:
        raise ValueError(f"Winograd F({m}x{m}, 3x3) needs H and W divisible by {m}, got {h}x{w}")
    th, tw = h // m, w // m
    BT, AT = _matrix(m, "BT"), _matrix(m, "AT")
    xp = x if padded else jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # B^T d B, separably and for all tiles at once: column k of every tile is
    # a strided slice of the padded input; combine the columns (d B), stack
    # them, then the same over rows (B^T ...). Two a-way stacks keep the
    # program small (a slice per tile entry would compile to a^2 of them).
    cols = [xp[:, :, k : k + m * tw : m] for k in range(a)]  # each (n, H+2, tw, I)
    s = jnp.stack(_combine(BT, cols), 0)  # (a, n, H+2, tw, I), [j]
    rows = [s[:, :, k : k + m * th : m] for k in range(a)]  # each (a, n, th, tw, I)
    v = jnp.stack(_combine(BT, rows), 0)  # (a, a, n, th, tw, I), [i, j]
    v = v.reshape(a, a, n * th * tw, -1)
    out_dtype = x.dtype
    if dot_dtype is not None:
        v, u = v.astype(dot_dtype), u.astype(dot_dtype)
    prod = batched_matmul(v, u, out_dtype)  # (a, a, P, O)
    # A^T M A for all tiles at once: one matmul of kron(A^T, A^T) (m^2 x a^2)
    # with M, which the batched dot leaves laid out (a^2, P, O) for it; then
    # the m x m output tiles back into the image.
    y = jnp.einsum("rsij,ijpo->rspo", np.kron(AT, AT).reshape(m, m, a, a).astype(out_dtype), prod, precision="highest")
    y = y.reshape(m, m, n, th, tw, -1)
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, h, w, -1)
