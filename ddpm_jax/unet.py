"""The release's UNet (`diffusion_tf/models/unet.py`; docs/reference.md §2) in Flax linen, NHWC.

Module names follow the TensorFlow release's scopes (`temb`, `down_{i}`,
`block_{j}`, `attn_{j}`, `mid`, `up_{i}`, `nin_shortcut`, `norm_out`) so the
PyTorch checkpoints map onto the params by a short table. 1x1 convolutions
(attention q/k/v/proj_out, nin_shortcut) are Dense layers over channels.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import UNetConfig


def timestep_embedding(t: jax.Array, dim: int, dtype=jnp.float32) -> jax.Array:
    """Sinusoidal embedding of int t (n,) -> (n, dim), as in the release."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(dtype)


def _norm(name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False, name=name)


def _conv3x3(features: int, name: str, stride: int = 1, padding=((1, 1), (1, 1))) -> nn.Conv:
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=padding, name=name)


class ResnetBlock(nn.Module):
    out_ch: int
    dropout: float

    @nn.compact
    def __call__(self, x, temb, train: bool):
        h = _conv3x3(self.out_ch, "conv1")(nn.swish(_norm("norm1")(x)))
        h = h + nn.Dense(self.out_ch, name="temb_proj")(nn.swish(temb))[:, None, None, :]
        h = nn.swish(_norm("norm2")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv3x3(self.out_ch, "conv2")(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch, name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual."""

    @nn.compact
    def __call__(self, x):
        n, hgt, wid, c = x.shape
        h = _norm("norm")(x)
        q = nn.Dense(c, name="q")(h).reshape(n, hgt * wid, c)
        k = nn.Dense(c, name="k")(h).reshape(n, hgt * wid, c)
        v = nn.Dense(c, name="v")(h).reshape(n, hgt * wid, c)
        w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) * c**-0.5, axis=-1)
        h = jnp.einsum("bij,bjc->bic", w, v).reshape(n, hgt, wid, c)
        return x + nn.Dense(c, name="proj_out")(h)


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        # TF "SAME" for stride 2: pad 0 before and 1 after on H and W.
        return _conv3x3(x.shape[-1], "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv3x3(x.shape[-1], "conv")(x)


class TimestepEmbed(nn.Module):
    ch: int

    @nn.compact
    def __call__(self, t, dtype):
        emb = nn.Dense(4 * self.ch, name="dense_0")(timestep_embedding(t, self.ch, dtype))
        return nn.Dense(4 * self.ch, name="dense_1")(nn.swish(emb))


class DownLevel(nn.Module):
    """One resolution level going down; returns h and the skips it adds."""

    config: UNetConfig
    level: int

    @nn.compact
    def __call__(self, h, temb, train: bool):
        cfg = self.config
        out_ch = cfg.ch * cfg.ch_mult[self.level]
        skips = []
        for j in range(cfg.num_res_blocks):
            h = ResnetBlock(out_ch, cfg.dropout, name=f"block_{j}")(h, temb, train)
            if h.shape[1] in cfg.attn_resolutions:
                h = AttnBlock(name=f"attn_{j}")(h)
            skips.append(h)
        if self.level != len(cfg.ch_mult) - 1:
            h = Downsample(name="downsample")(h)
            skips.append(h)
        return h, skips


class UpLevel(nn.Module):
    """One resolution level going up over its num_res_blocks + 1 skips (last first)."""

    config: UNetConfig
    level: int

    @nn.compact
    def __call__(self, h, skips, temb, train: bool):
        cfg = self.config
        out_ch = cfg.ch * cfg.ch_mult[self.level]
        for j, skip in enumerate(reversed(skips)):
            h = jnp.concatenate([h, skip], axis=-1)
            h = ResnetBlock(out_ch, cfg.dropout, name=f"block_{j}")(h, temb, train)
            if h.shape[1] in cfg.attn_resolutions:
                h = AttnBlock(name=f"attn_{j}")(h)
        if self.level != 0:
            h = Upsample(name="upsample")(h)
        return h


class Mid(nn.Module):
    config: UNetConfig

    @nn.compact
    def __call__(self, h, temb, train: bool):
        c, p = h.shape[-1], self.config.dropout
        h = ResnetBlock(c, p, name="block_1")(h, temb, train)
        h = AttnBlock(name="attn_1")(h)
        return ResnetBlock(c, p, name="block_2")(h, temb, train)


class UNet(nn.Module):
    """eps_theta(x_t, t): x NHWC float32 in [-1, 1], t int32 (n,) -> eps, NHWC.

    Dropout is active only with `train=True` (needs a 'dropout' rng). The
    computation follows x's dtype: bfloat16 x with bfloat16 params runs in
    bfloat16 throughout.
    """

    config: UNetConfig

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        cfg = self.config
        temb = TimestepEmbed(cfg.ch, name="temb")(t, x.dtype)
        h = nn.Conv(cfg.ch, (3, 3), padding=((1, 1), (1, 1)), name="conv_in")(x)
        skips = [h]
        for i in range(len(cfg.ch_mult)):
            h, level_skips = DownLevel(cfg, i, name=f"down_{i}")(h, temb, train)
            skips += level_skips
        h = Mid(cfg, name="mid")(h, temb, train)
        per_level = cfg.num_res_blocks + 1
        for i in reversed(range(len(cfg.ch_mult))):
            h = UpLevel(cfg, i, name=f"up_{i}")(h, skips[-per_level:], temb, train)
            del skips[-per_level:]
        h = nn.swish(_norm("norm_out")(h))
        return nn.Conv(cfg.out_ch, (3, 3), padding=((1, 1), (1, 1)), name="conv_out")(h)


def init_params(config: UNetConfig, key: jax.Array) -> dict:
    """Random params (Flax's default initialisers) as a plain nested dict."""
    x = jnp.zeros((1, config.resolution, config.resolution, config.in_channels), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    return jax.jit(UNet(config).init)(key, x, t)["params"]


def count_params(params) -> int:
    return sum(int(p.size) for p in jax.tree.leaves(params))
