"""How the UNet computes its convolutions, matmuls and GroupNorms: `Ops`, a static choice.

The UNet's params are the same whatever `Ops` says (names, shapes, init), so
training, checkpoints and the converters never see it. It only changes the
*run params*, the inference layout `Diffusion` makes once at load
(`run_params`): kernels of the 3x3 convolutions that run as Winograd
F(m x m, 3x3) are stored transformed, (m+2, m+2, I, O); with a `dot_dtype`,
every conv and Dense kernel is stored in it.

`Ops()` is XLA's convolution in the params' dtype: the release's UNet as
written. `CPU_WINOGRAD` is the table of the fast CPU path, `CPU_WINOGRAD_SMALL` that of
its calls on one or two small images (see `bench/conv_policy.py` for the measurements
behind them). Each conv runs as its run params are laid out: a (3, 3, I, O) kernel as XLA's
convolution, an (m+2, m+2, I, O) one as F(m x m, 3x3). On the fast path each GroupNorm (with
its swish, and a Winograd conv's zero border) runs on ddpm_jax's CPU kernel once it is ready;
elsewhere as Flax's ops (`group_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from . import group_norm, winograd

_DIMS = ("NHWC", "HWIO", "NHWC")

# (smallest map side, m): F(4x4, 3x3) from 16x16 maps up, F(2x2, 3x3) on 8x8
# and 4x4 maps. On the round-3 EPYC (Zen 5) F(2x2) beat F(4x4) on every 8x8
# shape at batch 1 and 8, and the cifar10 step took 4-8% less at batch 1 than
# with F(4x4) from 8x8 up, the same at 8 and 32 (bench/conv_policy.py --against).
CPU_WINOGRAD = ((4, 2), (16, 4))
# A UNet call on at most SMALL_CALL_PIXELS (images x H x W: one or two 32x32 images) runs
# CPU_WINOGRAD_SMALL's layout instead, its own run params made on first use
# (`Diffusion.run_params_for`): F(2x2) on 8x8 and 16x16 maps, F(4x4) on 32x32, XLA's on 4x4.
# With so few tiles each product of the batched dot is a few rows against a transformed kernel
# that F(4x4) makes 4x and F(2x2) 1.8x the 3x3 kernel, each product on one core: the whole
# cifar10 step at batch 1 took 57 ms against 63 with CPU_WINOGRAD, at batch 2 89 against 98, at 4
# the same and at 8 288 against 273 (2-core Xeon with AMX, bench/conv_policy.py --against;
# docs/benchmarks.md, "Batch classes").
CPU_WINOGRAD_SMALL = ((8, 2), (32, 4))
SMALL_CALL_PIXELS = 2 * 32 * 32
# With bfloat16 operands, F(2x2, 3x3) only: F(4x4)'s transforms (coefficients
# up to 8) carry bfloat16's rounding into the output about 4x larger.
BF16_WINOGRAD = ((4, 2),)
# "auto" leaves convolutions with fewer channels to XLA: each Winograd conv
# adds compile time, and below 128 channels (the bundled 16x16 model, the
# tests' tiny UNets) it saves less per step than that costs over a chain.
AUTO_MIN_CHANNELS = 128
CONVS = ("auto", "xla", "winograd")
# A job of at most this many image-steps (pictures x chain steps) runs XLA's convolution when the
# conv is "auto" (`conv_for_job`): a process compiles XLA's in about half Winograd's time and loads
# the params without transforming them, which such a job does not win back per step. On the
# round-3 EPYC, the cifar10 UNet, one picture in 10 DPM-Solver++ steps, a fresh process: 6.8 s
# against 11.1 with an empty compilation cache (bench/first_sample.py, docs/benchmarks.md).
SHORT_JOB = 32
# A batch larger than this many pixels (images x H x W) runs through the Winograd UNet in equal
# micro-batches, one after another (`micro_batch`, `in_micro_batches`). F(4x4)'s transformed
# input tiles are 2.25x the activations; at batch 32 on 32x32 maps they leave the cache, and the
# transforms, not the products, took most of the step. The cifar10 step in micro-batches of 8
# against the whole batch (bench/conv_policy.py --micro, docs/benchmarks.md): on the
# round-3 EPYC (Zen 5) 0.73x the time at batch 32 and 0.55x at 64; on a Xeon with AMX 0.93x and
# 0.80x. Micro-batches of 4 won at batch 8 on the EPYC (0.82-0.90x) but lost 10% on the Xeon;
# of 16, 0.75x at 64 on the Xeon, 0.78x at 32 on the EPYC. XLA's own convolution gained nothing.
CPU_MICRO_PIXELS = 8 * 32 * 32


def conv_for_job(conv: str, image_steps: int) -> str:
    """The conv a job of `image_steps` (pictures x steps) runs: "xla" for "auto" up to SHORT_JOB,
    else `conv` as given. Pictures do not depend on the batch size either way; the two convs agree
    to ~1e-5 (a uint8 pixel may differ by one level), so pin `conv` to compare jobs of both kinds."""
    if conv not in CONVS:
        raise ValueError(f"unknown conv {conv!r}; valid: {', '.join(CONVS)}")
    return "xla" if conv == "auto" and image_steps <= SHORT_JOB else conv


def micro_batch(run_params, height: int, width: int) -> int:
    """Images per UNet call for (height, width) images: `CPU_MICRO_PIXELS` worth (at least one)
    where some conv runs as Winograd on the CPU (a kernel of `run_params` in a Winograd layout),
    else 0, the whole batch in one call. Reads only shapes, so it works on tracers."""
    winograd_kernels = any(a.ndim == 4 and a.shape[0] != 3 for a in jax.tree.leaves(run_params))
    if not winograd_kernels or jax.default_backend() != "cpu":
        return 0
    return max(1, CPU_MICRO_PIXELS // (height * width))


def per_call(n: int, size: int) -> int:
    """Images in each UNet call when n images run in equal micro-batches of at most `size`
    (`in_micro_batches`; `size` 0: one call of n)."""
    if not size or n <= size:
        return n
    return -(-n // -(-n // size))


def in_micro_batches(fn, x, t, size: int):
    """fn(x, t) for a batch x (n, ...) and timesteps t (n,), in equal micro-batches of at most
    `size` images run one after another (one `lax.map`, so `fn` is traced once); the batch is
    padded to a whole number of them and the padding dropped. `size` 0 or >= n: one call."""
    n = x.shape[0]
    each = per_call(n, size)
    if each == n:
        return fn(x, t)
    calls = -(-n // size)
    pad = calls * each - n
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(calls, each, *x.shape[1:])
    ts = jnp.pad(jnp.broadcast_to(t, (n,)), (0, pad)).reshape(calls, each)
    out = jax.lax.map(lambda a: fn(*a), (xs, ts))
    return out.reshape(calls * each, *out.shape[2:])[:n]


@dataclass(frozen=True)
class Ops:
    """`winograd`: (min_size, m) pairs, ascending in min_size. A 3x3 stride-1
    convolution with at least `min_channels` channels in and out, on a map of
    side >= min_size (H == W, divisible by m), runs as F(m x m, 3x3) for the
    largest such min_size; every other convolution (strided, conv_in,
    conv_out, maps too small) runs XLA's. Empty: XLA's everywhere.

    `dot_dtype` None computes in the params' and inputs' common dtype. With
    "bfloat16", each conv and matmul casts its operands to bfloat16 and
    accumulates and returns float32 (`preferred_element_type`): activations,
    GroupNorm, swish and softmax stay float32.
    """

    winograd: tuple[tuple[int, int], ...] = ()
    min_channels: int = 32
    dot_dtype: str | None = None

    def winograd_tile(self, in_shape, features: int, stride: int) -> int:
        """m for a 3x3 conv of input (n, H, W, I) to `features`; 0 for XLA's conv."""
        _, h, w, c = in_shape
        if stride != 1 or h != w or min(c, features) < self.min_channels:
            return 0
        m = 0
        for min_size, tile in self.winograd:
            if h >= min_size and h % tile == 0:
                m = tile
        return m

    def kernel_init(self, m: int):
        """nn.Conv's default init (lecun normal), in F(m x m, 3x3)'s layout when m > 0."""
        init = nn.initializers.lecun_normal()
        if not m:
            return init
        return lambda key, shape, dtype=jnp.float32: winograd.transform_kernel(init(key, shape, dtype), m)

    def _operands(self, *arrays):
        """The arrays in the dtype the product takes, and the dtype it returns."""
        if self.dot_dtype is None:
            arrays = promote_dtype(*arrays)
            return arrays, arrays[0].dtype
        return [a.astype(self.dot_dtype) for a in arrays], jnp.float32

    def conv3x3(self, x, kernel, bias, m: int, stride: int, padding, padded: bool = False):
        """x (n, H, W, I) conv kernel + bias; kernel in F(m x m)'s layout when m > 0. `padded`: x
        is (n, H+2, W+2, I), the stride-1 conv's zero border already around it."""
        if padded:
            padding = ((0, 0), (0, 0))
        if m:  # the tile transforms stay in x's dtype; only the batched dot casts
            x, kernel = promote_dtype(x, kernel) if self.dot_dtype is None else (x, kernel)
            y = winograd.conv(x, kernel, m, dot_dtype=self.dot_dtype, padded=padded)
        else:
            (x, kernel), out = self._operands(x, kernel)
            y = jax.lax.conv_general_dilated(
                x, kernel, (stride, stride), padding, dimension_numbers=_DIMS, preferred_element_type=out
            )
        return y + bias.astype(y.dtype)

    @property
    def norm_pad(self) -> int:
        """The zero border a GroupNorm before a Winograd conv writes around its output, so the
        conv takes its input padded: 1 on the fast path (the CPU kernel writes it in the same
        pass; XLA fused the pad with its own GroupNorm), else 0."""
        return 1 if self.winograd else 0

    def group_norm(self, x, scale, bias, groups: int, eps: float, swish: bool, pad: int = 0):
        """GroupNorm, then swish and a zero border if asked (`group_norm.group_norm`): in ddpm_jax's
        CPU kernel on the fast path (a Winograd table) once it is ready (`group_norm.fused`), else
        as Flax's ops."""
        norm = group_norm.fused if self.winograd else group_norm.group_norm
        return norm(x, scale, bias, groups, eps, swish, pad)

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        """`lax.dot_general` for nn.Dense, in `dot_dtype` when there is one."""
        (lhs, rhs), out = self._operands(lhs, rhs)
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=out)

    def promote(self, *args, dtype=None, inexact=True):
        """nn.Dense's dtype promotion; with `dot_dtype` the dot casts, so nothing here."""
        if self.dot_dtype is None:
            return promote_dtype(*args, dtype=dtype, inexact=inexact)
        return list(args)

    def einsum(self, spec: str, a, b):
        """jnp.einsum of two operands (attention), in `dot_dtype` when there is one."""
        (a, b), out = self._operands(a, b)
        return jnp.einsum(spec, a, b, preferred_element_type=out)


class Precision(NamedTuple):
    """The UNet's activation dtype, its run params' dtypes (kernels of convs
    and Dense layers; the rest: biases, GroupNorm) and `Ops.dot_dtype`."""

    activations: str
    kernels: str
    others: str
    dot_dtype: str | None = None

    def cast(self, params: dict) -> dict:
        """Every leaf of `params` in its run dtype (cast once, at load)."""

        def one(path, a):
            return jnp.asarray(a, self.kernels if path[-1].key == "kernel" else self.others)

        return jax.tree_util.tree_map_with_path(one, params)


PRECISIONS = {
    "float32": Precision("float32", "float32", "float32"),
    "bfloat16": Precision("bfloat16", "bfloat16", "bfloat16"),
    "mixed_bf16": Precision("float32", "bfloat16", "float32", dot_dtype="bfloat16"),
}


def choose_ops(precision: str, conv: str, backend: str, call_pixels: int | None = None) -> Ops:
    """The `Ops` for a precision (a `PRECISIONS` key) and a conv choice
    ("auto": Winograd on the CPU backend where activations are float32;
    "xla"; "winograd") on `backend` (jax.default_backend()), for UNet calls
    of `call_pixels` (images x H x W; None: any number): float32 calls of at
    most SMALL_CALL_PIXELS take `CPU_WINOGRAD_SMALL`'s tiles."""
    p = PRECISIONS[precision]
    table = CPU_WINOGRAD if precision == "float32" else BF16_WINOGRAD
    if precision == "float32" and call_pixels is not None and call_pixels <= SMALL_CALL_PIXELS:
        table = CPU_WINOGRAD_SMALL
    if conv == "winograd":
        return Ops(table, dot_dtype=p.dot_dtype)
    if conv == "auto" and backend == "cpu" and p.activations == "float32":
        return Ops(table, min_channels=AUTO_MIN_CHANNELS, dot_dtype=p.dot_dtype)
    return Ops(dot_dtype=p.dot_dtype)
