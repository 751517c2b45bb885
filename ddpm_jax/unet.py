"""The release's UNet (`diffusion_tf/models/unet.py`; docs/reference.md §2) in Flax linen, NHWC.

Module names follow the TensorFlow release's scopes (`temb`, `down_{i}`,
`block_{j}`, `attn_{j}`, `mid`, `up_{i}`, `nin_shortcut`, `norm_out`) so the
PyTorch checkpoints map onto the params by a short table. 1x1 convolutions
(attention q/k/v/proj_out, nin_shortcut) are Dense layers over channels.

Every module takes `ops` (see `ops.py`): how its convolutions and matmuls are
computed. The default is XLA's convolution in the params' dtype; the params'
names and shapes never depend on it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import UNetConfig
from .ops import Ops


def timestep_embedding(t: jax.Array, dim: int, dtype=jnp.float32) -> jax.Array:
    """Sinusoidal embedding of int t (n,) -> (n, dim), as in the release."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(dtype)


class _Params:
    """`param` without Flax's check of each param's shape against its initializer.

    Flax traces every initializer (`jax.eval_shape`) at each apply to compare shapes: half the
    UNet's trace, 0.3 s of a cifar10 model's first picture (docs/benchmarks.md, "Time to the
    first sample"). `Diffusion` checks every param's shape when it is given them
    (`weights.check_params`), so the UNet's modules take their params as plain variables.
    """

    def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
        def init():
            return init_fn(self.make_rng("params"), *init_args, **init_kwargs)

        return self.variable("params", name, init, unbox=unbox).value


class Dense(_Params, nn.Dense):
    """nn.Dense, its params taken as they are (`_Params`)."""


class GroupNorm(_Params, nn.Module):
    """The release's `normalize` (GroupNorm, 32 groups, eps 1e-6; params `scale` and `bias` (C,)
    as nn.GroupNorm's), then swish when `swish` and a zero border of `pad` pixels, as `ops`
    computes them (`Ops.group_norm`)."""

    swish: bool = False
    ops: Ops = Ops()
    pad: int = 0
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros_init(), (x.shape[-1],))
        return self.ops.group_norm(x, scale, bias, groups=32, eps=self.epsilon, swish=self.swish, pad=self.pad)


def _norm(name: str, ops: Ops, swish: bool = False, pad: int = 0) -> GroupNorm:
    return GroupNorm(swish, ops, pad, name=name)


class Conv3x3(_Params, nn.Module):
    """nn.Conv with a 3x3 kernel and its params: `kernel` (3, 3, I, O) HWIO, `bias` (O,).

    Where `ops` runs it as Winograd F(m x m, 3x3), the run params hold the
    kernel transformed at load, (m+2, m+2, I, O); a conv runs as its kernel is
    laid out, so one UNet takes the layouts of every batch class (`Diffusion.run_params_for`).
    """

    features: int
    stride: int = 1
    padding: tuple = ((1, 1), (1, 1))
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, padded: bool = False):
        """`padded`: x has its zero border already (a stride-1 conv's input, `Ops.norm_pad`)."""
        n, h, w, c = x.shape
        shape = (n, h - 2, w - 2, c) if padded else x.shape
        m = self.ops.winograd_tile(shape, self.features, self.stride)
        kernel = self.param("kernel", self.ops.kernel_init(m), (3, 3, x.shape[-1], self.features))
        m = kernel.shape[0] - 2 if kernel.shape[0] != 3 else 0
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return self.ops.conv3x3(x, kernel, bias, m, self.stride, self.padding, padded)


def _dense(features: int, name: str, ops: Ops) -> Dense:
    return Dense(features, name=name, dot_general=ops.dot_general, promote_dtype=ops.promote)


class ResnetBlock(nn.Module):
    out_ch: int
    dropout: float
    ops: Ops = Ops()

    def _border(self, conv: str) -> int:
        """`Ops.norm_pad` where conv `conv`'s kernel is laid out as Winograd (its run params), else
        0: XLA's own convolution ran slower on a padded input than with its padding."""
        kernel = self.variables.get("params", {}).get(conv, {}).get("kernel")
        return self.ops.norm_pad if kernel is not None and kernel.shape[0] != 3 else 0

    @nn.compact
    def __call__(self, x, temb, train: bool):
        pad = self._border("conv1")
        h = _norm("norm1", self.ops, swish=True, pad=pad)(x)
        h = Conv3x3(self.out_ch, ops=self.ops, name="conv1")(h, padded=bool(pad))
        h = h + _dense(self.out_ch, "temb_proj", self.ops)(nn.swish(temb))[:, None, None, :]
        pad = self._border("conv2")
        h = _norm("norm2", self.ops, swish=True, pad=pad)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)  # keeps the border's zeros
        h = Conv3x3(self.out_ch, ops=self.ops, name="conv2")(h, padded=bool(pad))
        if x.shape[-1] != self.out_ch:
            x = _dense(self.out_ch, "nin_shortcut", self.ops)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual."""

    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x):
        n, hgt, wid, c = x.shape
        h = _norm("norm", self.ops)(x)
        q = _dense(c, "q", self.ops)(h).reshape(n, hgt * wid, c)
        k = _dense(c, "k", self.ops)(h).reshape(n, hgt * wid, c)
        v = _dense(c, "v", self.ops)(h).reshape(n, hgt * wid, c)
        w = jax.nn.softmax(self.ops.einsum("bic,bjc->bij", q, k) * c**-0.5, axis=-1)
        h = self.ops.einsum("bij,bjc->bic", w, v).reshape(n, hgt, wid, c)
        return x + _dense(c, "proj_out", self.ops)(h)


class Downsample(nn.Module):
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x):
        # TF "SAME" for stride 2: pad 0 before and 1 after on H and W.
        return Conv3x3(x.shape[-1], 2, ((0, 1), (0, 1)), self.ops, name="conv")(x)


class Upsample(nn.Module):
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return Conv3x3(x.shape[-1], ops=self.ops, name="conv")(x)


class TimestepEmbed(nn.Module):
    ch: int
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, t, dtype):
        emb = _dense(4 * self.ch, "dense_0", self.ops)(timestep_embedding(t, self.ch, dtype))
        return _dense(4 * self.ch, "dense_1", self.ops)(nn.swish(emb))


class DownLevel(nn.Module):
    """One resolution level going down; returns h and the skips it adds."""

    config: UNetConfig
    level: int
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, h, temb, train: bool):
        cfg, ops = self.config, self.ops
        out_ch = cfg.ch * cfg.ch_mult[self.level]
        skips = []
        for j in range(cfg.num_res_blocks):
            h = ResnetBlock(out_ch, cfg.dropout, ops, name=f"block_{j}")(h, temb, train)
            if h.shape[1] in cfg.attn_resolutions:
                h = AttnBlock(ops, name=f"attn_{j}")(h)
            skips.append(h)
        if self.level != len(cfg.ch_mult) - 1:
            h = Downsample(ops, name="downsample")(h)
            skips.append(h)
        return h, skips


class UpLevel(nn.Module):
    """One resolution level going up over its num_res_blocks + 1 skips (last first)."""

    config: UNetConfig
    level: int
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, h, skips, temb, train: bool):
        cfg, ops = self.config, self.ops
        out_ch = cfg.ch * cfg.ch_mult[self.level]
        for j, skip in enumerate(reversed(skips)):
            h = jnp.concatenate([h, skip], axis=-1)
            h = ResnetBlock(out_ch, cfg.dropout, ops, name=f"block_{j}")(h, temb, train)
            if h.shape[1] in cfg.attn_resolutions:
                h = AttnBlock(ops, name=f"attn_{j}")(h)
        if self.level != 0:
            h = Upsample(ops, name="upsample")(h)
        return h


class Mid(nn.Module):
    config: UNetConfig
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, h, temb, train: bool):
        c, p, ops = h.shape[-1], self.config.dropout, self.ops
        h = ResnetBlock(c, p, ops, name="block_1")(h, temb, train)
        h = AttnBlock(ops, name="attn_1")(h)
        return ResnetBlock(c, p, ops, name="block_2")(h, temb, train)


class UNet(nn.Module):
    """eps_theta(x_t, t): x NHWC float32 in [-1, 1], t int32 (n,) -> eps, NHWC.

    Dropout is active only with `train=True` (needs a 'dropout' rng). With
    the default `ops` the computation follows x's dtype: bfloat16 x with
    bfloat16 params runs in bfloat16 throughout.
    """

    config: UNetConfig
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        cfg, ops = self.config, self.ops
        temb = TimestepEmbed(cfg.ch, ops, name="temb")(t, x.dtype)
        h = Conv3x3(cfg.ch, ops=ops, name="conv_in")(x)
        skips = [h]
        for i in range(len(cfg.ch_mult)):
            h, level_skips = DownLevel(cfg, i, ops, name=f"down_{i}")(h, temb, train)
            skips += level_skips
        h = Mid(cfg, ops, name="mid")(h, temb, train)
        per_level = cfg.num_res_blocks + 1
        for i in reversed(range(len(cfg.ch_mult))):
            h = UpLevel(cfg, i, ops, name=f"up_{i}")(h, skips[-per_level:], temb, train)
            del skips[-per_level:]
        h = _norm("norm_out", ops, swish=True)(h)
        return Conv3x3(cfg.out_ch, ops=ops, name="conv_out")(h)


def init_params(config: UNetConfig, key: jax.Array) -> dict:
    """Random params (Flax's default initialisers) as a plain nested dict."""
    x = jnp.zeros((1, config.resolution, config.resolution, config.in_channels), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    return jax.jit(UNet(config).init)(key, x, t)["params"]


def count_params(params) -> int:
    return sum(int(p.size) for p in jax.tree.leaves(params))
