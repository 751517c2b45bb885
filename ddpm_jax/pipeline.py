"""`Diffusion`: a model and its process, with denoise/diffuse from any step.

In the spirit of pesser/pytorch_diffusion's object: `curr_step` counts the
forward steps x has had (T for pure noise x_T, 0 for a clean image).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from . import cpu_flags, images, native, samplers
from .checks import check_int
from .coefficients import Coefficients, make_coefficients
from .config import DiffusionConfig, UNetConfig
from .diffusion import model_prediction
from .inpainting import (
    PAPER_JUMP_LENGTH,
    PAPER_JUMP_N_SAMPLE,
    check_mask,
    check_schedule,
    default_steps,
    jump_schedule,
    repaint_chunk,
)
from .interpolation import check_lambdas, lerp, slerp
from .likelihood import Bound, bound_chunk, grid_images, variational_bound
from .memory import check_batch
from .ops import (
    CONVS,
    CPU_MICRO_PIXELS,
    PRECISIONS,
    SMALL_CALL_PIXELS,
    choose_ops,
    in_micro_batches,
    micro_batch,
    per_call,
)
from .run_layout import layout_params, run_shapes
from .samplers import Sampler
from .sampling import denoise_chunk, diffuse_chunk, initial_noise
from .sharding import replicate, shard_batch
from .stored_programs import StoredJit
from .unet import UNet
from .weights import check_params, flatten_params, save_weights


class Step(NamedTuple):
    """Where a chain stands between two compiled chunks.

    `x` (n, H, W, C) has had `step` forward steps; `pred_x0` is the model's
    estimate of x_0 at the last reverse step (eq. 15), None when diffusing.
    A multistep sampler's chain resumes from all three: `denoise(n, x=s.x,
    curr_step=s.step, pred_x0=s.pred_x0, key=...)`.
    """

    x: jax.Array
    step: int
    pred_x0: jax.Array | None = None


Callback = Callable[[Step], None]


# Seeds are ints in [0, 2**64): the two 32-bit words of a threefry key. Seeds
# below 2**32 give jax.random.key(seed) as before; jax.random.key itself keeps
# only the low 32 bits without jax_enable_x64, so 2**32 and 0 would collide.
SEED_RANGE = (0, 2**64 - 1)


def as_key(key) -> jax.Array:
    """None -> seed 0; an int seed in `SEED_RANGE` -> its own key; a PRNG key passes through."""
    if key is None:
        key = 0
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        seed = check_int("seed", key, *SEED_RANGE)
        words = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
        return jax.random.wrap_key_data(words, impl="threefry2x32")
    if isinstance(key, jax.Array) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise TypeError(f"key must be an int seed in [0, 2**64) or a jax.random key, got {type(key).__name__} {key!r:.80}")


def _apply_unet(model: UNet, dtype, micro: int | None, params, x, t):
    """The UNet on x cast to `dtype` (its activations' dtype; run params
    already laid out), eps back in float32; in micro-batches of `micro` images
    (None: `ops.micro_batch`'s choice, 0: the whole batch at once)."""
    size = micro_batch(params, *x.shape[1:3]) if micro is None else micro

    def one(x, t):
        return model.apply({"params": params}, x.astype(dtype), t).astype(jnp.float32)

    return in_micro_batches(one, x, t, size)


def _run(chain: Iterator[Step], callback: Callback | None) -> jax.Array:
    """Drive a chain to its end, calling `callback` on each Step; the last x."""
    for item in chain:
        if callback is not None:
            callback(item)
    return item.x


def _check_images(name, x, shape) -> np.ndarray:
    """(H, W, C) or (m, H, W, C) float images in [-1, 1] -> (m, H, W, C) float32 numpy."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape {shape} or (m, *{shape}), got {type(x).__name__}")
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} has dtype {a.dtype}; expected floats in [-1, 1] (uint8 u: u / 127.5 - 1)")
    a = a[None] if a.ndim == 3 else a
    if a.ndim != 4 or a.shape[1:] != shape or not len(a):
        raise ValueError(f"{name} has shape {np.shape(x)}; this model expects {shape} or (m, *{shape}) NHWC")
    if not np.isfinite(a).all() or a.min() < -1.0 or a.max() > 1.0:
        raise ValueError(
            f"{name} must be finite and in [-1, 1], got values in [{np.nanmin(a):.3f}, "
            f"{np.nanmax(a):.3f}]; rescale it (uint8 u: u / 127.5 - 1)"
        )
    return a.astype(np.float32)


def _broadcast(name, a: np.ndarray, n: int) -> np.ndarray:
    if len(a) not in (1, n):
        raise ValueError(f"{name} has a batch of {len(a)}; expected 1 (shared) or n={n}")
    return np.broadcast_to(a, (n, *a.shape[1:]))


class Chain(NamedTuple):
    """A sampler over a chain of `steps` of the model's timesteps, and its
    tables: `coeffs` of length `steps`, and `padded`, the same zero-padded to
    length T, so that one compiled chunk serves every chain length."""

    sampler: Sampler
    steps: int
    coeffs: Coefficients
    padded: Coefficients


class Diffusion:
    """A DDPM: UNet params plus the diffusion process they were trained with,
    and a default sampler.

    Sampling runs in jitted chunks of `chunk_size` steps (one compilation per
    batch shape and sampler); callbacks and progress happen between chunks.

    With a `mesh` (see `sharding.data_mesh`) the batch is split over its
    devices and the params replicated; n must be a multiple of its size.

    `sampler` (a name in `ddpm_jax.samplers.names()` or a `Sampler`; None: the
    model's own, `samplers.default_sampler`: "ddpm", or for a model distilled to
    N steps DDIM over N trailing timesteps, N unless `steps` says otherwise) and
    `steps` are the default chain: `steps` < T respaces it to that many of
    the model's timesteps, as the sampler spaces them ("ddpm": Alg. 2 on the
    respaced process; "ddim": eq. 12, `eta` 0 deterministic; "dpmpp_2m" and
    "dpmpp_2m_sde": DPM-Solver++(2M) and its SDE variant as diffusers'
    `DPMSolverMultistepScheduler` runs them, 1 <= steps <= T-1). `eta` is
    refused for a sampler without one. `num_timesteps` is the default chain's
    length S, and `curr_step` counts along the chain a call runs. Every
    `denoise*`/`diffuse*` call may run another chain (`sampler=`, `steps=`)
    on the same compiled UNet. Multistep samplers also use the previous
    step's pred_x0: to resume such a chain pass the `Step`'s pred_x0 back.

    `precision` is how the UNet computes (the step math stays float32):
    "float32"; "bfloat16", everything in bfloat16; "mixed_bf16", bfloat16
    operands with float32 accumulation in every conv and matmul, the rest
    float32 (see `ops.Ops`). `conv` "auto" runs the 3x3 convolutions as
    Winograd on the CPU backend (float32 and mixed_bf16) and as XLA's
    convolution elsewhere; "xla" and "winograd" force one. Either way the
    params are the same; only the run params are laid out differently, and
    on the CPU a call on one or two small images gets its own layout
    (`run_params_for`, `ops.CPU_WINOGRAD_SMALL`). For the
    fast CPU path's XLA flags see `ddpm_jax.cpu_flags`. `micro_batch` is how
    many images one UNet call takes, a larger batch running in equal
    micro-batches one after another: None (default) picks
    `ops.CPU_MICRO_PIXELS` worth where Winograd convs run on the CPU (8
    images of 32x32) and the whole batch elsewhere; 0 always the whole
    batch. Pictures do not depend on it beyond float rounding.
    """

    # Coefficient tables kept per (spacing, steps): a few KB each.
    TABLES_KEPT = 64

    def __init__(
        self,
        *,
        diffusion_config: DiffusionConfig,
        unet_config: UNetConfig,
        params: dict,
        sampler: str | Sampler | None = None,
        steps: int | None = None,
        eta: float | None = None,
        chunk_size: int = 10,
        precision: str = "float32",
        conv: str = "auto",
        mesh: Mesh | None = None,
        micro_batch: int | None = None,
    ):
        check_params(flatten_params(params), unet_config)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; valid: {', '.join(CONVS)}")
        self.diffusion_config = diffusion_config
        self.unet_config = unet_config
        if sampler is None:  # the model's own chain (a distilled model's N steps), as far as not given
            sampler, own_steps = samplers.default_sampler(diffusion_config)
            steps = own_steps if steps is None else steps
        self.sampler = samplers.get(sampler, eta)
        self.num_timesteps = self.sampler.check_steps(steps, diffusion_config.num_diffusion_timesteps)
        self.chunk_size = check_int("chunk_size", chunk_size, 1, 10**6)
        self.micro_batch = None if micro_batch is None else check_int("micro_batch", micro_batch, 0, 10**6)
        self.precision, self.conv = precision, conv
        backend = jax.default_backend()
        self.model = UNet(unet_config, choose_ops(precision, conv, backend))
        # The ops of calls on at most ops.SMALL_CALL_PIXELS: their own layout where it differs.
        small = choose_ops(precision, conv, backend, call_pixels=1)
        self._small_ops = small if small != self.model.ops and mesh is None else None
        self.params = jax.device_put(params)
        self.dtype = jnp.dtype(PRECISIONS[precision].activations)
        self.mesh = mesh
        self._tables: dict[tuple[str, int], tuple[Coefficients, Coefficients]] = {}
        self._run: dict[str, dict] = {}  # run params of each batch class, made on first use
        # A batch sharded over a mesh runs whole: micro-batches would gather it on each device.
        self._micro = 0 if mesh is not None else self.micro_batch
        model_fn = partial(_apply_unet, self.model, self.dtype, self._micro)
        self._denoise_chunk = self._stored(
            "denoise_chunk", partial(denoise_chunk, model_fn, chunk=self.chunk_size), ("clip", "sampler")
        )
        self._diffuse_chunk = jax.jit(partial(diffuse_chunk, chunk=self.chunk_size))
        self._bound_chunk = self._stored("bound_chunk", partial(bound_chunk, model_fn, chunk=self.chunk_size), "clip")
        self._repaint_chunk = self._stored(
            "repaint_chunk", partial(repaint_chunk, model_fn, chunk=self.chunk_size), "clip"
        )

    def _stored(self, name, fn, static_argnames):
        """`fn` jitted; on one device, through programs kept on disk (`stored_programs`), so that a
        new process does not trace the UNet again. Everything `fn` bakes in is in the fingerprint."""
        jitted = jax.jit(fn, static_argnames=static_argnames)
        if self.mesh is not None:
            return jitted
        fingerprint = (
            f"{self.diffusion_config!r}|{self.unet_config!r}|{self.model.ops!r}|{self.dtype}|{self.chunk_size}"
            f"|micro {self.micro_batch} of {CPU_MICRO_PIXELS} px"
        )
        return StoredJit(jitted, name, fingerprint)

    @property
    def eta(self) -> float | None:
        """The default sampler's eta (None for a sampler without one)."""
        return self.sampler.eta

    @property
    def coeffs(self) -> Coefficients:
        """The default chain's tables."""
        return self.chain().coeffs

    def _table(self, spacing: str, steps: int) -> tuple[Coefficients, Coefficients]:
        """The chain's tables and the same padded to length T, kept in a cache of the
        TABLES_KEPT most recently used. Padded on the host: a chain of a new length
        compiles nothing (a pad on the device would stay compiled for every length asked for)."""
        key = (spacing, steps)
        tables = self._tables.pop(key, None)  # re-inserted below: the dict is in order of use
        if tables is None:
            while len(self._tables) >= self.TABLES_KEPT:
                self._tables.pop(next(iter(self._tables)), None)
            coeffs = make_coefficients(self.diffusion_config, steps, spacing)
            T = self.diffusion_config.num_diffusion_timesteps
            tables = coeffs, jax.tree.map(lambda a: jax.device_put(np.pad(np.asarray(a), (0, T - len(a)))), coeffs)
        self._tables[key] = tables
        return tables

    def chain(self, sampler: str | Sampler | None = None, steps: int | None = None) -> Chain:
        """The chain a call runs: the default one, or `sampler` (default: this
        model's) over `steps` (default: all T where the sampler allows it)."""
        if sampler is None and steps is None:
            sampler, steps = self.sampler, self.num_timesteps
        sampler = self.sampler if sampler is None else samplers.get(sampler)
        steps = sampler.check_steps(steps, self.diffusion_config.num_diffusion_timesteps)
        return Chain(sampler, steps, *self._table(sampler.spacing, steps))

    @property
    def run_params(self) -> dict:
        """The params as the UNet runs them on batches (made on first use, see `_prepare`;
        shared with the models `respaced` makes). A call on one or two small images
        may take another layout: `run_params_for`."""
        return self._run_params("params", self.model.ops)

    def run_params_for(self, n: int) -> dict:
        """The run params a call on n images takes: on the CPU, where at most
        `ops.SMALL_CALL_PIXELS` go through one UNet call (micro-batches counted),
        `ops.CPU_WINOGRAD_SMALL`'s layout (made on first use), else `run_params`."""
        height, width, _ = self.image_shape
        if self._small_ops is None or per_call(n, self._micro) * height * width > SMALL_CALL_PIXELS:
            return self.run_params
        return self._run_params("small", self._small_ops)

    def _run_params(self, name: str, ops) -> dict:
        if name not in self._run:  # made eagerly even inside a trace (`eps`): never a tracer kept
            with jax.ensure_compile_time_eval():
                self._run[name] = self._prepare(ops)
        return self._run[name]

    def _prepare(self, ops):
        """`params` as UNet(config, ops) runs them: Winograd kernels transformed and
        every leaf cast once for `precision`, replicated over the mesh if
        there is one. Warns where a conv runs as Winograd without the CPU flags. On the fast
        path, ddpm_jax's CPU kernels are made ready first, so every program of the model traces
        on them (a model traced before another made them ready would trace again after)."""
        shapes = jax.tree.leaves(run_shapes(self.unet_config, ops))
        if jax.default_backend() == "cpu" and ops.winograd:
            native.prepare()  # its GroupNorm runs on the kernel whether or not a conv is Winograd
        if jax.default_backend() == "cpu" and any(len(s.shape) == 4 and s.shape[0] != 3 for s in shapes):
            cpu_flags.warn_if_missing(stacklevel=5)  # some conv runs as Winograd
        run = PRECISIONS[self.precision].cast(layout_params(self.unet_config, ops, self.params))
        return run if self.mesh is None else replicate(run, self.mesh)

    def with_params(self, params) -> Diffusion:
        """The same model and sampler with other params (say, a training run's
        EMA params): it shares this object's compiled chunks, so nothing
        recompiles."""
        check_params(flatten_params(params), self.unet_config)
        new = copy.copy(self)
        new.params = jax.device_put(params)
        new._run = {}  # laid out on first use, each batch class's as a call needs it
        return new

    def eps(self, x, t, params=None) -> jax.Array:
        """eps_theta(x_t, t) with this model's run params (or `params`, run
        params of this model, say as an argument of a jitted function so they
        are not baked in as constants) and precision: x (n, H, W, C) float32,
        t int32 (n,) model timesteps; float32 out. Traceable (jit it).
        A v or x_0 model's output is turned into eps (`diffusion.model_prediction`)."""
        params = self.run_params_for(x.shape[0]) if params is None else params
        output = _apply_unet(self.model, self.dtype, self._micro, params, x, t)
        return model_prediction(output, x, t, self._process, clip=False)[0]

    @property
    def _process(self) -> Coefficients:
        """The tables of the model's own T-step process (chain index = model timestep), made
        eagerly even inside a trace (`eps`), so that the table cache never holds a tracer."""
        with jax.ensure_compile_time_eval():
            return self.chain(samplers.get("ddpm"), self.diffusion_config.num_diffusion_timesteps).coeffs

    def respaced(
        self, steps: int | None, sampler: str | Sampler = "ddpm", eta: float | None = None, **kwargs
    ) -> Diffusion:
        """The same model with another default chain: `sampler` over `steps`.

        Shares params, run params and compiled chunks (nothing recompiles)
        unless `kwargs` change how the UNet runs (`precision`, `conv`,
        `mesh`, `chunk_size`, `micro_batch`), which builds a new model on the same params.
        """
        sampler = samplers.get(sampler, eta)
        steps = sampler.check_steps(steps, self.diffusion_config.num_diffusion_timesteps)
        same = {
            "chunk_size": self.chunk_size,
            "precision": self.precision,
            "conv": self.conv,
            "mesh": self.mesh,
            "micro_batch": self.micro_batch,
        }
        if any(kwargs.get(k, v) is not v and kwargs.get(k, v) != v for k, v in same.items()):
            new = Diffusion(
                diffusion_config=self.diffusion_config,
                unet_config=self.unet_config,
                params=self.params,
                sampler=sampler,
                steps=steps,
                **{**same, **kwargs},
            )
            if (new.model.ops, new.precision, new.mesh) == (self.model.ops, self.precision, self.mesh):
                new._run = self._run  # the same layout: not made twice
            return new
        if kwargs.keys() - same.keys():
            raise TypeError(f"respaced() got unexpected arguments: {', '.join(sorted(kwargs.keys() - same.keys()))}")
        new = copy.copy(self)
        new.sampler, new.num_timesteps = sampler, steps
        return new

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> Diffusion:
        """A bundled or released name, a Hub id or a local path (see `ddpm_jax.convert.resolve`).

        The one door from the core to the converters, imported only when called.
        """
        from .convert.resolve import load_pretrained

        dcfg, ucfg, params = load_pretrained(name_or_path)
        return cls(diffusion_config=dcfg, unet_config=ucfg, params=params, **kwargs)

    def save_pretrained(self, path):
        """Write params and configs to one .safetensors file."""
        save_weights(path, self.params, diffusion_config=self.diffusion_config, unet_config=self.unet_config)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.unet_config
        return (c.resolution, c.resolution, c.in_channels)

    def _check_x(self, x, n, name="x"):
        want = (n, *self.image_shape)
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name} must be an array of shape {want} float32, got {type(x).__name__}")
        if tuple(x.shape) != want:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; this model expects (n, H, W, C) = {want}")
        if x.dtype != np.float32:
            raise ValueError(f"{name} has dtype {x.dtype}; this model expects float32 ({name}.astype('float32'))")
        x = jax.device_put(x)
        if not bool(jnp.isfinite(x).all()):
            raise ValueError(
                f"{name} holds NaN or infinite values; it must be finite (images in [-1, 1], or a chain's x_t)"
            )
        return x

    def _ids(self, n, first_index):
        n = check_int("n", n, 1, 2**31 - 1)
        first_index = check_int("first_index", first_index, 0, 2**31 - 1 - n)
        check_batch(n, self.unet_config, 1 if self.mesh is None else self.mesh.size)
        return n, self._place(jnp.arange(first_index, first_index + n, dtype=jnp.int32))

    def _place(self, batch):
        return batch if self.mesh is None else shard_batch(batch, self.mesh)

    def denoise_steps(
        self,
        n,
        n_steps=None,
        x=None,
        curr_step=None,
        key=None,
        *,
        clip=True,
        first_index=0,
        pred_x0=None,
        sampler: str | Sampler | None = None,
        steps: int | None = None,
    ) -> Iterator[Step]:
        """Validate, then iterate the reverse chain: yields a `Step` per chunk.

        Starts from x (which has had `curr_step` forward steps) or, when x is
        None, from fresh noise x_T. Runs t = curr_step-1 down to
        curr_step-n_steps of the chain (`chain(sampler, steps)`: the default
        one unless either is given). Sample i is numbered first_index + i for
        its noise.

        `pred_x0` resumes a multistep chain (DPM-Solver++): pass the `Step`'s
        x, step and pred_x0 together and the rest equals one call. Without it
        the first step from x is first order (a fresh start from x_t, as when
        x was diffused there); DDPM and DDIM do not read it.
        """
        chain = self.chain(sampler, steps)
        T = chain.steps
        n, ids = self._ids(n, first_index)
        curr_step = check_int("curr_step", T if curr_step is None else curr_step, 1, T)
        n_steps = check_int("n_steps", curr_step if n_steps is None else n_steps, 1, curr_step)
        key = as_key(key)
        if x is None:
            if curr_step != T:
                raise ValueError(f"x is required when curr_step={curr_step} < T={T}; fresh noise is x_T")
            x = initial_noise(key, ids, self.image_shape)
        else:
            x = self._place(self._check_x(x, n))
        if pred_x0 is not None:
            if curr_step == T:
                raise ValueError(
                    f"pred_x0 is the previous step's prediction; at curr_step=T={T} there is none: leave it out (None)"
                )
            pred_x0 = self._place(self._check_x(pred_x0, n, "pred_x0"))
        return self._denoise_iter(chain, x, curr_step, n_steps, key, ids, bool(clip), pred_x0)

    def _denoise_iter(self, chain: Chain, x, step, remaining, key, ids, clip, pred_x0=None):
        has_prev = pred_x0 is not None
        pred_x0 = jnp.zeros_like(x) if pred_x0 is None else pred_x0
        params = self.run_params_for(x.shape[0])
        while remaining > 0:
            k = min(self.chunk_size, remaining)
            x, pred_x0 = self._denoise_chunk(
                params, chain.padded, x, pred_x0, step, k, key, ids, has_prev, clip=clip, sampler=chain.sampler
            )
            step, remaining, has_prev = step - k, remaining - k, True
            yield Step(x, step, pred_x0)

    def diffuse_steps(
        self,
        n,
        n_steps=None,
        x=None,
        curr_step=None,
        key=None,
        *,
        first_index=0,
        sampler: str | Sampler | None = None,
        steps: int | None = None,
    ) -> Iterator[Step]:
        """Validate, then iterate the forward chain: yields a `Step` (pred_x0 None) per chunk.

        Runs t = curr_step up to curr_step+n_steps-1 (curr_step defaults to 0)
        of the chain `chain(sampler, steps)` (its timesteps; diffusing uses no
        sampler's step). At curr_step 0, x is x_0: images in [-1, 1] (a value
        outside is refused, not silently noised); later x_t may hold any value.
        """
        chain = self.chain(sampler, steps)
        T = chain.steps
        n, ids = self._ids(n, first_index)
        curr_step = check_int("curr_step", 0 if curr_step is None else curr_step, 0, T - 1)
        n_steps = check_int("n_steps", T - curr_step if n_steps is None else n_steps, 1, T - curr_step)
        if x is None:
            raise ValueError("diffuse needs x: the images (n, H, W, C) float32 in [-1, 1] to noise")
        x = self._check_x(x, n)
        if curr_step == 0 and (float(x.min()) < -1.0 or float(x.max()) > 1.0):
            raise ValueError(
                f"x at curr_step=0 is x_0, images in [-1, 1], but holds values in [{float(x.min()):.3g}, "
                f"{float(x.max()):.3g}]; rescale it (uint8 u: u / 127.5 - 1), or give the curr_step x has had"
            )
        return self._diffuse_iter(chain, self._place(x), curr_step, n_steps, as_key(key), ids)

    def _diffuse_iter(self, chain: Chain, x, step, remaining, key, ids):
        while remaining > 0:
            k = min(self.chunk_size, remaining)
            x = self._diffuse_chunk(chain.padded, x, step, k, key, ids)
            step, remaining = step + k, remaining - k
            yield Step(x, step)

    def denoise(
        self, n, n_steps=None, x=None, curr_step=None, key=None, callback: Callback | None = None, **kwargs
    ) -> jax.Array:
        """Run the reverse chain (Alg. 2, or the sampler's); callback(Step) between chunks. Returns x.
        Keyword arguments as `denoise_steps` (clip, first_index, pred_x0, sampler, steps)."""
        return _run(self.denoise_steps(n, n_steps, x, curr_step, key, **kwargs), callback)

    def diffuse(
        self, n, n_steps=None, x=None, curr_step=None, key=None, callback: Callback | None = None, **kwargs
    ) -> jax.Array:
        """Run the forward chain (eq. 2); callback(Step) between chunks. Returns x.
        Keyword arguments as `diffuse_steps` (first_index, sampler, steps)."""
        return _run(self.diffuse_steps(n, n_steps, x, curr_step, key, **kwargs), callback)

    def inpaint_steps(
        self,
        image,
        mask,
        n=None,
        key=None,
        *,
        steps=None,
        jump_length=PAPER_JUMP_LENGTH,
        jump_n_sample=PAPER_JUMP_N_SAMPLE,
        clip=True,
        first_index=0,
        x=None,
        start=0,
    ) -> Iterator[Step]:
        """Validate, then iterate RePaint (Lugmayr et al. 2022, Alg. 1): yields a `Step` per chunk.

        `image` (H, W, C) or (m, H, W, C) float32 in [-1, 1]; `mask` 1 keeps a
        pixel, 0 fills it: (H, W), (H, W, 1|C) or with a leading batch (see
        `inpainting.check_mask`). n completions (default: the batch of image
        and mask); a batch of 1 is shared by all. The model's T-step process
        is respaced to `steps` (default: the model's own DDPM chain if it is
        respaced, else min(250, T), the paper's 250), and
        the chain follows `inpainting.jump_schedule(steps, jump_length,
        jump_n_sample)`; jump_n_sample=1 is the cheap "replacement" method
        (no jumps). Each chunk runs `chunk_size` iterations of the schedule;
        `Step.step` is where x stands on the respaced chain, so it goes up
        on jumps. Resume with the x of a Step and `start` = the number of
        iterations run before it. Sample i is numbered first_index + i for
        its noise; it starts from the x_T `denoise` would give it.
        """
        T = self.diffusion_config.num_diffusion_timesteps
        if self.sampler.name != "ddpm":
            raise ValueError(
                f"inpaint runs RePaint, which is defined on DDPM steps (Lugmayr et al. 2022, Alg. 1); "
                f"this model's sampler is {self.sampler.name!r}: call inpaint on a DDPM model "
                f"(as loaded, or model.respaced(None)) and choose RePaint's chain with steps="
            )
        if steps is None:
            steps = self.num_timesteps if self.num_timesteps < T else default_steps(T)
        steps = check_int("steps", steps, 1, T)
        jump_n_sample = check_int("jump_n_sample", jump_n_sample, 1, 10**4)
        if jump_n_sample > 1:
            jump_length = check_int("jump_length", jump_length, 1, max(1, steps - 1))
        check_schedule(steps, jump_length, jump_n_sample)  # before the schedule is made
        schedule = jump_schedule(steps, jump_length, jump_n_sample)
        start = check_int("start", start, 0, len(schedule) - 1)
        known = _check_images("image", image, self.image_shape)
        masks = check_mask(mask, self.image_shape)
        n, ids = self._ids(max(len(known), len(masks)) if n is None else n, first_index)
        known, masks = (
            self._place(jax.device_put(_broadcast(name, a, n))) for name, a in (("image", known), ("mask", masks))
        )
        key = as_key(key)
        if x is None:
            if start:
                raise ValueError(f"x is required when start={start} > 0: the x of the Step to resume from")
            x = initial_noise(key, ids, self.image_shape)
        else:
            x = self._place(self._check_x(x, n))
        ddpm = self.chain(samplers.get("ddpm"), steps)
        return self._inpaint_iter(x, known, masks, schedule, start, ddpm.padded, key, ids, bool(clip))

    def _inpaint_iter(self, x, known, mask, schedule, pos, coeffs, key, ids, clip):
        pred_x0, c = jnp.zeros_like(x), self.chunk_size
        params = self.run_params_for(x.shape[0])
        while pos < len(schedule):
            rows = schedule[pos : pos + c]
            padded = np.zeros((c, 2), np.int32)
            padded[: len(rows)] = rows
            x, pred_x0 = self._repaint_chunk(
                params, coeffs, x, pred_x0, known, mask, padded, pos, len(rows), key, ids, clip=clip
            )
            pos += len(rows)
            t, direction = rows[-1]
            yield Step(x, int(t + direction), pred_x0)  # a FORWARD row leaves x at t + 1

    def inpaint(self, image, mask, n=None, key=None, callback: Callback | None = None, **kwargs) -> jax.Array:
        """Fill the mask-0 pixels of `image` (RePaint); callback(Step) between chunks.
        Returns x_0 (n, H, W, C); keyword arguments as `inpaint_steps`."""
        return _run(self.inpaint_steps(image, mask, n, key, **kwargs), callback)

    def interpolate_steps(self, image_a, image_b, t, lambdas, key=None, *, clip=True, index=0) -> Iterator[Step]:
        """Validate, encode, then iterate the decoding of Sec. 4.4: yields a `Step` per chunk.

        Images a and b (H, W, C) float32 in [-1, 1] are diffused to x_t
        (`diffuse`, t forward steps, 1 <= t <= num_timesteps) with the same
        noise, mixed as (1 - lambda) x_t + lambda x'_t for each of the k
        `lambdas` in [0, 1], and denoised with the reverse noise fixed across
        lambda: all are numbered `index` for their noise. So lambda = 0 (1)
        gives exactly `denoise(1, x=diffuse(1, t, x=a, key=key, first_index=index),
        curr_step=t, key=key, first_index=index)` for a (b), and no lambda
        depends on the others.
        """
        t = check_int("t", t, 1, self.num_timesteps)
        lam = self._lambdas(lambdas)
        pair = np.concatenate(
            [
                _broadcast(name, _check_images(name, img, self.image_shape), 1)
                for name, img in (("image_a", image_a), ("image_b", image_b))
            ]
        )
        index = check_int("index", index, 0, 2**31 - 1)
        key = as_key(key)
        same = jnp.full((2,), index, jnp.int32)  # the same forward noise for a and b
        x_t = _run(self._diffuse_iter(self.chain(), jax.device_put(pair), 0, t, key, same), None)
        return self._decode_mix(lerp(x_t[0], x_t[1], lam), t, key, index, clip)

    def interpolate(
        self, image_a, image_b, t, lambdas, key=None, callback: Callback | None = None, **kwargs
    ) -> jax.Array:
        """Interpolate two images through x_t (Sec. 4.4, Fig. 8): (k, H, W, C), one per lambda.
        Keyword arguments as `interpolate_steps`."""
        return _run(self.interpolate_steps(image_a, image_b, t, lambdas, key, **kwargs), callback)

    def interpolate_noise_steps(self, lambdas, key=None, *, indices=(0, 1), clip=True) -> Iterator[Step]:
        """New samples between two: the x_T of samples indices[0] and [1] under `key`
        (those of `denoise`), spherically interpolated for each lambda and denoised
        with the reverse noise of sample indices[0]. lambda = 0 gives exactly
        `denoise(1, key=key, first_index=indices[0])`."""
        lam = self._lambdas(lambdas)
        if len(indices) != 2:
            raise ValueError(f"indices must name two samples (a, b), got {indices!r}")
        ia, ib = (check_int("indices", i, 0, 2**31 - 1) for i in indices)
        key = as_key(key)
        x_T = initial_noise(key, jnp.array([ia, ib], jnp.int32), self.image_shape)
        return self._decode_mix(slerp(x_T[0], x_T[1], lam), self.num_timesteps, key, ia, clip)

    def interpolate_noise(self, lambdas, key=None, callback: Callback | None = None, **kwargs) -> jax.Array:
        """Spherical interpolation of two fresh x_T, denoised: (k, H, W, C); see `interpolate_noise_steps`."""
        return _run(self.interpolate_noise_steps(lambdas, key, **kwargs), callback)

    def _lambdas(self, lambdas) -> np.ndarray:
        """Checked lambdas (`interpolation.check_lambdas`), one image each: a batch that
        must fit in memory (`memory.check_batch`) before anything is allocated."""
        lam = check_lambdas(lambdas)
        devices = 1 if self.mesh is None else self.mesh.size
        fix = "interpolate fewer lambdas per call (each lambda's image depends on no other)"
        check_batch(len(lam), self.unet_config, devices, name="len(lambdas)", fix=fix)
        return lam

    def _decode_mix(self, x, t, key, index, clip):
        """The default chain from t for a batch that shares sample number `index`."""
        ids = self._place(jnp.full((x.shape[0],), index, jnp.int32))
        return self._denoise_iter(self.chain(), self._place(x), t, t, key, ids, bool(clip))

    def bpd(self, x0, key=None, *, clip=True, first_index=0) -> Bound:
        """The variational bound (eq. 5) of each image in bits/dim, as the release's
        `calc_bpd_loop` (see `likelihood`): total, per-t terms, prior and MSE.

        x0: (n, H, W, C) uint8, or floats in [-1, 1] on the 8-bit grid. `clip`
        clips the predicted x_0 to [-1, 1] (the release's default). Image i's
        noise at step t depends only on (key, first_index + i, t). One
        compilation per batch shape; with a mesh, n must be a multiple of its size.

        The bound is that of the model's own T-step process (eq. 5), whatever
        the default sampler: a respaced model gives the same bits/dim as the
        model it came from (the sampler is how to draw, not what the model is).
        """
        x0 = grid_images(x0, self.image_shape)
        _, ids = self._ids(x0.shape[0], first_index)
        return variational_bound(
            self._bound_chunk,
            self.run_params_for(x0.shape[0]),
            self._process,
            self._place(jax.device_put(x0)),
            as_key(key),
            ids,
            chunk=self.chunk_size,
            clip=bool(clip),
        )

    @staticmethod
    def to_uint8(x, clip=False) -> np.ndarray:
        return images.to_uint8(x, clip=clip)

    def save(self, x, pattern="{:03}.png", start_idx=0):
        """Save float images in [-1, 1] (clamped) as one PNG each."""
        return images.save_images(self.to_uint8(x, clip=True), pattern, start_idx)
