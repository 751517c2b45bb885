"""`Diffusion`: a model and its process, with denoise/diffuse from any step.

In the spirit of pesser/pytorch_diffusion's object: `curr_step` counts the
forward steps x has had (T for pure noise x_T, 0 for a clean image).
"""

from __future__ import annotations

import copy
import operator
import warnings
from functools import partial
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from . import cpu_flags, images
from .coefficients import make_coefficients
from .diffusion import ddim_step, denoising_step
from .config import DiffusionConfig, UNetConfig
from .sampling import denoise_chunk, diffuse_chunk, initial_noise
from .ops import CONVS, PRECISIONS, choose_ops
from .sharding import replicate, shard_batch
from .unet import UNet, layout_params
from .weights import check_params, flatten_params, save_weights



class Step(NamedTuple):
    """Where a chain stands between two compiled chunks.

    `x` (n, H, W, C) has had `step` forward steps; `pred_x0` is the model's
    estimate of x_0 at the last reverse step (eq. 15), None when diffusing.
    """

    x: jax.Array
    step: int
    pred_x0: jax.Array | None = None


Callback = Callable[[Step], None]
SAMPLERS = ("ddpm", "ddim")
DTYPES = ("float32", "bfloat16")  # the deprecated `dtype` argument's values


def as_key(key) -> jax.Array:
    """None -> key(0); an int seed -> key(seed); a PRNG key passes through."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _apply_unet(model: UNet, dtype, params, x, t):
    """The UNet on x cast to `dtype` (its activations' dtype; run params
    already laid out), eps back in float32."""
    return model.apply({"params": params}, x.astype(dtype), t).astype(jnp.float32)


def _run(chain: Iterator[Step], callback: Callback | None) -> jax.Array:
    """Drive a chain to its end, calling `callback` on each Step; the last x."""
    for item in chain:
        if callback is not None:
            callback(item)
    return item.x


def _check_int(name, value, lo, hi):
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range; expected {lo} <= {name} <= {hi}")
    return value


class Diffusion:
    """A DDPM: UNet params plus the diffusion process they were trained with.

    Sampling runs in jitted chunks of `chunk_size` steps (one compilation per
    batch shape); callbacks and progress happen between chunks.

    With a `mesh` (see `sharding.data_mesh`) the batch is split over its
    devices and the params replicated; n must be a multiple of its size.

    `steps` < T respaces the chain to that many of the model's timesteps,
    evenly spread; `sampler` "ddpm" (Alg. 2 on the respaced process) or
    "ddim" (eq. 12, `eta` 0 deterministic). `num_timesteps` is then `steps`,
    and `curr_step` counts along the respaced chain.

    `precision` is how the UNet computes (the step math stays float32):
    "float32"; "bfloat16", everything in bfloat16; "mixed_bf16", bfloat16
    operands with float32 accumulation in every conv and matmul, the rest
    float32 (see `ops.Ops`). `conv` "auto" runs the 3x3 convolutions as
    Winograd on the CPU backend (float32 and mixed_bf16) and as XLA's
    convolution elsewhere; "xla" and "winograd" force one. Either way the
    params are the same; only `run_params` are laid out differently. For the
    fast CPU path's XLA flags see `ddpm_jax.cpu_flags`. (`dtype` is the old
    name of `precision` for float32/bfloat16.)
    """

    def __init__(self, diffusion_config: DiffusionConfig, unet_config: UNetConfig,
                 params: dict, *, chunk_size: int = 10, steps: int | None = None,
                 sampler: str = "ddpm", eta: float = 0.0, precision: str = "float32",
                 conv: str = "auto", mesh: Mesh | None = None, dtype: str | None = None):
        check_params(flatten_params(params), unet_config)
        if dtype is not None:
            if str(dtype) not in DTYPES:
                raise ValueError(f"unsupported dtype {dtype!r}; valid: {', '.join(DTYPES)} "
                                 f"(or precision=one of {', '.join(PRECISIONS)})")
            warnings.warn("Diffusion(dtype=...) is now precision=...", DeprecationWarning, stacklevel=2)
            precision = str(dtype)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; valid: {', '.join(CONVS)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        self.diffusion_config = diffusion_config
        self.unet_config = unet_config
        self.precision, self.conv = precision, conv
        backend = jax.default_backend()
        ops = choose_ops(precision, conv, backend)
        if ops.winograd and backend == "cpu":
            cpu_flags.warn_if_missing()
        self.model = UNet(unet_config, ops)
        self.params = jax.tree.map(jnp.asarray, params)
        self.dtype = jnp.dtype(PRECISIONS[precision].activations)
        self.mesh = mesh
        self.run_params = self._prepare(self.params)
        T = diffusion_config.num_diffusion_timesteps
        steps = T if steps is None else _check_int("steps", steps, 1, T)
        self.coeffs = make_coefficients(diffusion_config, steps)
        self.num_timesteps = self.coeffs.num_timesteps
        self.sampler, self.eta = sampler, float(eta)
        self.chunk_size = _check_int("chunk_size", chunk_size, 1, 10**6)
        eps_fn = partial(_apply_unet, self.model, self.dtype)
        step_fn = denoising_step if sampler == "ddpm" else partial(ddim_step, eta=self.eta)
        self._denoise_chunk = jax.jit(
            partial(denoise_chunk, eps_fn, chunk=self.chunk_size, step_fn=step_fn),
            static_argnames="clip",
        )
        self._diffuse_chunk = jax.jit(partial(diffuse_chunk, chunk=self.chunk_size))

    def _prepare(self, params):
        """Params as the UNet runs them: Winograd kernels transformed and
        every leaf cast once for `precision`, replicated over the mesh if
        there is one."""
        run = PRECISIONS[self.precision].cast(layout_params(self.unet_config, self.model.ops, params))
        return run if self.mesh is None else replicate(run, self.mesh)

    def with_params(self, params) -> "Diffusion":
        """The same model and sampler with other params (say, a training run's
        EMA params): it shares this object's compiled chunks, so nothing
        recompiles."""
        check_params(flatten_params(params), self.unet_config)
        new = copy.copy(self)
        new.params = jax.tree.map(jnp.asarray, params)
        new.run_params = new._prepare(new.params)
        return new

    def eps(self, x, t, params=None) -> jax.Array:
        """eps_theta(x_t, t) with this model's run params (or `params`, run
        params of this model, say as an argument of a jitted function so they
        are not baked in as constants) and precision: x (n, H, W, C) float32,
        t int32 (n,) model timesteps; float32 out. Traceable (jit it)."""
        return _apply_unet(self.model, self.dtype, self.run_params if params is None else params, x, t)

    def respaced(self, steps: int, sampler: str = "ddpm", eta: float = 0.0, **kwargs) -> "Diffusion":
        """The same model sampling a chain of `steps` steps (strided DDPM or DDIM)."""
        kwargs.setdefault("chunk_size", self.chunk_size)
        if "dtype" not in kwargs:
            kwargs.setdefault("precision", self.precision)
        kwargs.setdefault("conv", self.conv)
        kwargs.setdefault("mesh", self.mesh)
        return Diffusion(self.diffusion_config, self.unet_config, self.params,
                         steps=steps, sampler=sampler, eta=eta, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> "Diffusion":
        """A bundled or released name, a Hub id or a local path (see `pretrained.load_pretrained`)."""
        from .pretrained import load_pretrained

        dcfg, ucfg, params = load_pretrained(name_or_path)
        return cls(dcfg, ucfg, params, **kwargs)

    def save_pretrained(self, path):
        """Write params and configs to one .safetensors file."""
        save_weights(path, self.params, self.diffusion_config, self.unet_config)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.unet_config
        return (c.resolution, c.resolution, c.in_channels)

    def _check_x(self, x, n):
        want = (n, *self.image_shape)
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"x must be an array of shape {want} float32, got {type(x).__name__}")
        if tuple(x.shape) != want:
            raise ValueError(f"x has shape {tuple(x.shape)}; this model expects (n, H, W, C) = {want}")
        if x.dtype != np.float32:
            raise ValueError(f"x has dtype {x.dtype}; this model expects float32 (x.astype('float32'))")
        return jnp.asarray(x)

    def _ids(self, n, first_index):
        n = _check_int("n", n, 1, 2**31 - 1)
        first_index = _check_int("first_index", first_index, 0, 2**31 - 1 - n)
        return n, self._place(jnp.arange(first_index, first_index + n, dtype=jnp.int32))

    def _place(self, batch):
        return batch if self.mesh is None else shard_batch(batch, self.mesh)

    def denoise_steps(self, n, n_steps=None, x=None, curr_step=None, key=None, *,
                      clip=True, first_index=0) -> Iterator[Step]:
        """Validate, then iterate the reverse chain: yields a `Step` per chunk.

        Starts from x (which has had `curr_step` forward steps) or, when x is
        None, from fresh noise x_T. Runs t = curr_step-1 down to
        curr_step-n_steps. Sample i is numbered first_index + i for its noise.
        """
        T = self.num_timesteps
        n, ids = self._ids(n, first_index)
        curr_step = _check_int("curr_step", T if curr_step is None else curr_step, 1, T)
        n_steps = _check_int("n_steps", curr_step if n_steps is None else n_steps, 1, curr_step)
        key = as_key(key)
        if x is None:
            if curr_step != T:
                raise ValueError(f"x is required when curr_step={curr_step} < T={T}; fresh noise is x_T")
            x = initial_noise(key, ids, self.image_shape)
        else:
            x = self._place(self._check_x(x, n))
        return self._denoise_iter(x, curr_step, n_steps, key, ids, bool(clip))

    def _denoise_iter(self, x, step, remaining, key, ids, clip):
        pred_x0 = jnp.zeros_like(x)
        while remaining > 0:
            k = min(self.chunk_size, remaining)
            x, pred_x0 = self._denoise_chunk(
                self.run_params, self.coeffs, x, pred_x0, step, k, key, ids, clip=clip
            )
            step, remaining = step - k, remaining - k
            yield Step(x, step, pred_x0)

    def diffuse_steps(self, n, n_steps=None, x=None, curr_step=None, key=None, *,
                      first_index=0) -> Iterator[Step]:
        """Validate, then iterate the forward chain: yields a `Step` (pred_x0 None) per chunk.

        Runs t = curr_step up to curr_step+n_steps-1 (curr_step defaults to 0).
        """
        T = self.num_timesteps
        n, ids = self._ids(n, first_index)
        curr_step = _check_int("curr_step", 0 if curr_step is None else curr_step, 0, T - 1)
        n_steps = _check_int("n_steps", T - curr_step if n_steps is None else n_steps, 1, T - curr_step)
        if x is None:
            raise ValueError("diffuse needs x: the images (n, H, W, C) float32 in [-1, 1] to noise")
        x = self._place(self._check_x(x, n))
        return self._diffuse_iter(x, curr_step, n_steps, as_key(key), ids)

    def _diffuse_iter(self, x, step, remaining, key, ids):
        while remaining > 0:
            k = min(self.chunk_size, remaining)
            x = self._diffuse_chunk(self.coeffs, x, step, k, key, ids)
            step, remaining = step + k, remaining - k
            yield Step(x, step)

    def denoise(self, n, n_steps=None, x=None, curr_step=None, key=None,
                callback: Callback | None = None, *, clip=True, first_index=0) -> jax.Array:
        """Run the reverse chain (Alg. 2); callback(Step) between chunks. Returns x."""
        chain = self.denoise_steps(n, n_steps, x, curr_step, key, clip=clip, first_index=first_index)
        return _run(chain, callback)

    def diffuse(self, n, n_steps=None, x=None, curr_step=None, key=None,
                callback: Callback | None = None, *, first_index=0) -> jax.Array:
        """Run the forward chain (eq. 2); callback(Step) between chunks. Returns x."""
        return _run(self.diffuse_steps(n, n_steps, x, curr_step, key, first_index=first_index), callback)

    @staticmethod
    def to_uint8(x, clip=False) -> np.ndarray:
        return images.to_uint8(x, clip=clip)

    def save(self, x, pattern="{:03}.png", start_idx=0):
        """Save float images in [-1, 1] (clamped) as one PNG each."""
        return images.save_images(self.to_uint8(x, clip=True), pattern, start_idx)
