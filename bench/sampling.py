"""Sampling speed: ddpm_jax (plain, fast CPU path, mixed bfloat16) vs diffusers in PyTorch.

Every variant runs the same random weights (ours, made once, saved, and
converted to diffusers' layout for PyTorch) in its own subprocess, so XLA
flags are set before JAX starts and no thread pool is shared. ddpm_jax is
timed through its public API (`Diffusion.denoise` from a given x_T, one
compiled chunk of --steps steps); PyTorch runs diffusers' `UNet2DModel` and
`DDPMScheduler` step loop. Per-step time is the median over --reps chunks
after a warm-up; a run whose repeats spread by more than --max-spread, or
that starts while the load is high, is measured again (up to --retries).

Variants (--variants): jax_xla (the release UNet as written, XLA's
convolution, XLA's default flags), jax_fast (float32, the fast CPU path:
Winograd convolutions where they win, `ddpm_jax.cpu_flags`), jax_fast_noflags
(the same without the flags: what they add), jax_fast_whole (the same with
the whole batch in one UNet call, no micro-batches: what they add), jax_mixed_bf16
and jax_bf16 (the `precision` options), torch, torch_compile, torch_bf16
and torch_compile_bf16 (bfloat16: weights cast on the CPU as PyTorch users
do there, autocast on a GPU), onnxruntime and openvino (the same diffusers
UNet exported with `torch.onnx.export`, checked against PyTorch's output
before it is timed; `pip install -e '.[bench]'`).

    python bench/sampling.py                       # cifar10 batch 1/8/32 + lsun 1, float32; bf16 at batch 1/8
    python bench/sampling.py --quick               # cifar10 batch 1: jax_fast vs torch eager
    python bench/sampling.py --preset tiny         # every step of the benchmark on a tiny UNet, seconds
    python bench/sampling.py --cpus 1              # pinned to one core: ratios that a busy machine disturbs less
    python bench/sampling.py --device gpu --cases cifar10:1,cifar10:64 --chain cifar10:1 --parity cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    framework: str  # "jax", "torch", or an engine running diffusers' UNet from ONNX (`EngineRunner`)
    precision: str  # float32, bfloat16 or (jax) mixed_bf16
    conv: str = "auto"  # jax: Diffusion(conv=...)
    fast_flags: bool = True  # jax: the XLA flags `import ddpm_jax` sets (False: DDPM_JAX_CPU_FLAGS=0)
    compiled: bool = False  # torch: torch.compile
    micro_batch: int | None = None  # jax: Diffusion(micro_batch=...)


VARIANTS = {
    "jax_xla": Variant("jax", "float32", conv="xla", fast_flags=False),
    "jax_fast": Variant("jax", "float32"),
    "jax_fast_noflags": Variant("jax", "float32", fast_flags=False),
    "jax_fast_whole": Variant("jax", "float32", micro_batch=0),
    "jax_mixed_bf16": Variant("jax", "mixed_bf16"),
    "jax_bf16": Variant("jax", "bfloat16"),
    "torch": Variant("torch", "float32"),
    "torch_compile": Variant("torch", "float32", compiled=True),
    "torch_bf16": Variant("torch", "bfloat16"),
    "torch_compile_bf16": Variant("torch", "bfloat16", compiled=True),
    "onnxruntime": Variant("onnxruntime", "float32"),
    "openvino": Variant("openvino", "float32"),
}
DEFAULT_VARIANTS = "jax_xla,jax_fast,jax_mixed_bf16,torch,torch_compile,onnxruntime,openvino,torch_bf16"
# Which peer each of ours is compared with, and in which ratio column.
FLOAT32_PEERS = ("torch", "torch_compile", "onnxruntime", "openvino")
PEERS = {
    "jax_fast": FLOAT32_PEERS,
    "jax_xla": FLOAT32_PEERS,
    "jax_fast_noflags": FLOAT32_PEERS,
    "jax_fast_whole": FLOAT32_PEERS,
    "jax_mixed_bf16": ("torch_bf16", "torch_compile_bf16"),
    "jax_bf16": ("torch_bf16", "torch_compile_bf16"),
}
# The tiny preset: every part of the UNet (Winograd F(4x4) at 16x16 and 8x8),
# over a 20-step process so that a whole chain takes a moment.
TINY = dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
TINY_T = 20
# Parity inputs, as in tests/test_fast_path.py.
PARITY_T, PARITY_SCALES, PARITY_BATCHES = (0, 17, 500, 999), (1.0, 0.01), (1, 8)


def seconds_of(fn, reps):
    """Wall seconds of each of `reps` calls of `fn`."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _spread(times):
    med = statistics.median(times)
    return (max(times) - min(times)) / med if med else 0.0


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def cpu_features() -> list[str]:
    """The vector/matrix features that decide CPU speed here (AVX2, AVX-512, BF16, AMX)."""
    want = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [w for w in want if w in flags]


# --------------------------------------------------------------------------- workers


def _parity_inputs(ucfg):
    """The parity inputs: (n, scale, t, x NHWC float32), the same in every process."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (ucfg.resolution, ucfg.resolution, ucfg.in_channels)
    for n in PARITY_BATCHES:
        for scale in PARITY_SCALES:
            x = (scale * rng.standard_normal((n, *shape))).astype(np.float32)
            for t in PARITY_T:
                yield n, scale, t, x


def _diffusion(weights, variant: Variant, chunk_size):
    from ddpm_jax import Diffusion
    from ddpm_jax.weights import load_weights

    dcfg, ucfg, params = load_weights(weights)
    return Diffusion(
        diffusion_config=dcfg,
        unet_config=ucfg,
        params=params,
        chunk_size=chunk_size,
        precision=variant.precision,
        conv=variant.conv,
        micro_batch=variant.micro_batch,
    )


class JaxRunner:
    """One variant of ddpm_jax, through its public API."""

    def __init__(self, variant, device):
        import jax

        self.variant = variant
        d = jax.devices()[0]
        self.device = f"{d.platform}: {d.device_kind}"

    def peak_mb(self):
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None

    def step(self, weights, n, steps, reps):
        """(first call's seconds, [seconds per step], extras) for one compiled chunk of `steps`."""
        import jax
        import jax.numpy as jnp

        from ddpm_jax import batched_matmul
        from ddpm_jax.sampling import denoise_chunk
        from ddpm_jax.unet import UNet

        m = _diffusion(weights, self.variant, steps)
        T = m.num_timesteps
        x = jax.random.normal(jax.random.key(0), (n, *m.image_shape))

        def chunk():
            jax.block_until_ready(m.denoise(n, n_steps=steps, x=x, curr_step=T, key=1))

        # The sampler's own cost: the same chunk with the UNet replaced by a no-op.
        null = jax.jit(
            partial(denoise_chunk, lambda p, x, t: x * 0.0, chunk=steps, sampler=m.sampler), static_argnames="clip"
        )
        null_args = (
            m.run_params_for(n),
            m.coeffs,
            x,
            jnp.zeros_like(x),
            T,
            steps,
            jax.random.key(1),
            jnp.arange(n, dtype=jnp.int32),
        )
        null(*null_args)
        # The UNet's FLOPs as written (direct convolutions), whatever path runs it.
        t = jnp.full((n,), T - 1, jnp.int32)
        cost = jax.jit(UNet(m.unet_config).apply).lower({"params": m.params}, x, t).cost_analysis() or {}
        # The FLOPs of the program that runs (Winograd where it does): over the peak, the step's floor.
        # One image's, times n: XLA counts a micro-batch loop's body once, and the work is per image.
        run = m.run_params_for(n)  # the layout a call on n images takes
        with batched_matmul.xla_dot():  # XLA counts no FLOPs inside the products' kernel
            ran = jax.jit(lambda p, x, t: m.eps(x, t, params=p)).lower(run, x[:1], t[:1]).cost_analysis() or {}
        run_flops = ran["flops"] * n if ran.get("flops") else None
        null_s = seconds_of(lambda: jax.block_until_ready(null(*null_args)), reps)
        return chunk, dict(flops=cost.get("flops"), run_flops=run_flops, sampler_s=[s / steps for s in null_s])

    def chain(self, weights, n):
        import numpy as np

        m = _diffusion(weights, self.variant, 10)
        return (lambda: np.asarray(m.denoise(n, key=0))), m.num_timesteps

    def parity(self, weights):
        """eps for each parity input (NHWC numpy)."""
        import jax
        import numpy as np

        m = _diffusion(weights, self.variant, 10)
        eps = jax.jit(lambda p, x, t: m.eps(x, t, params=p))
        for n, _scale, t, x in _parity_inputs(m.unet_config):
            yield np.asarray(eps(m.run_params_for(n), x, np.full((n,), t, np.int32)))


class TorchRunner:
    """diffusers' UNet2DModel + DDPMScheduler in PyTorch, eager or compiled."""

    def __init__(self, variant, device):
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        self.variant, self.dev = variant, "cuda" if device == "gpu" else "cpu"
        self.device = torch.cuda.get_device_name() if self.dev == "cuda" else "cpu"

    def peak_mb(self):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if self.dev == "cuda" else None

    def _load(self, weights):
        return _diffusers_unet(weights, self.dev, self.variant)

    def _sync(self):
        import torch

        if self.dev == "cuda":
            torch.cuda.synchronize()

    def _loop(self, weights, n, steps=None):
        """A function running `steps` scheduler steps (all T when None) from fixed noise."""
        import torch

        dcfg, ucfg, eps = self._load(weights)
        sched = _torch_scheduler(dcfg)
        timesteps = sched.timesteps if steps is None else sched.timesteps[:steps]
        gen = torch.Generator(self.dev).manual_seed(0)
        x = torch.randn(n, ucfg.in_channels, ucfg.resolution, ucfg.resolution, generator=gen, device=self.dev)

        def run():
            y = x
            with torch.inference_mode():
                for t in timesteps:
                    y = sched.step(eps(y, t), t, y, generator=gen).prev_sample
            self._sync()
            return y.cpu()

        return run, len(timesteps)

    def step(self, weights, n, steps, reps):
        return self._loop(weights, n, steps)[0], {}

    def chain(self, weights, n):
        return self._loop(weights, n)

    def parity(self, weights):
        import torch

        _, ucfg, eps = self._load(weights)
        for n, _scale, t, x in _parity_inputs(ucfg):
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(self.dev)
            with torch.inference_mode():
                out = eps(xt, torch.full((n,), t, dtype=torch.long, device=self.dev))
            yield out.cpu().numpy().transpose(0, 2, 3, 1)


class EngineRunner(TorchRunner):
    """diffusers' UNet2DModel exported with `torch.onnx.export` and run by ONNX Runtime or
    OpenVINO (float32, on the CPU), in TorchRunner's scheduler loop; the engine's eps is checked
    against PyTorch's before anything is timed."""

    def __init__(self, variant, device):
        if device != "cpu":
            raise ValueError(f"{variant.framework} runs here on the CPU only")
        super().__init__(variant, device)
        import importlib.metadata

        self.device = f"cpu: {variant.framework} {importlib.metadata.version(variant.framework)}"

    def _load(self, weights):
        import numpy as np
        import torch

        dcfg, ucfg, unet, path = onnx_unet(weights)
        run = (_onnxruntime if self.variant.framework == "onnxruntime" else _openvino)(path)
        check_engine(self.variant.framework, run, unet, ucfg)

        def eps(x, t):
            t = t.expand(x.shape[0]) if t.ndim == 0 else t  # the scheduler passes one t for the batch
            return torch.from_numpy(run(x.numpy(), t.numpy().astype(np.int64)))

        return dcfg, ucfg, eps


RUNNERS = {"jax": JaxRunner, "torch": TorchRunner}


def onnx_unet(weights):
    """(dcfg, ucfg, unet, path): diffusers' UNet2DModel of `weights` and its ONNX export
    (`torch.onnx.export`, the TorchScript exporter; inputs x NCHW float32 and t int64, batch free)."""
    import torch

    dcfg, ucfg, unet = diffusers_module(weights)

    class SampleOnly(torch.nn.Module):
        """The UNet returning its output tensor (ONNX exports tensors, not diffusers' dataclass)."""

        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t).sample

    x = torch.zeros(2, ucfg.in_channels, ucfg.resolution, ucfg.resolution)
    path = Path(tempfile.mkdtemp()) / "unet.onnx"
    torch.onnx.export(
        SampleOnly().eval(),  # (a new Module trains; export would restore that mode, dropout on)
        (x, torch.tensor([3, 500])),
        path,
        input_names=["x", "t"],
        output_names=["eps"],
        dynamic_axes={"x": {0: "n"}, "t": {0: "n"}, "eps": {0: "n"}},
        dynamo=False,  # the TorchScript exporter: one graph, no onnxscript rewrites
    )
    return dcfg, ucfg, unet, path


def check_engine(name, run, unet, ucfg):
    """Raise unless the engine's `run(x, t)` gives PyTorch's eps (within 1e-4) on random inputs."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, ucfg.in_channels, ucfg.resolution, ucfg.resolution, generator=gen), torch.tensor([3, 500])
    with torch.inference_mode():
        diff = float(np.abs(run(x.numpy(), t.numpy()) - unet(x, t).sample.numpy()).max())
    if not diff < 1e-4:
        raise RuntimeError(f"{name}'s eps is {diff:.2e} from PyTorch's; not timed")


def onnxruntime_session(path, profile_prefix: str | None = None):
    """An ONNX Runtime session of `path` on the CPU, one intra-op thread per CPU we have; with
    `profile_prefix`, profiling every node (`session.end_profiling()` writes the JSON)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnxruntime(path):
    """run(x, t) -> eps of an ONNX Runtime session on the CPU."""
    session = onnxruntime_session(path)
    return lambda x, t: session.run(None, {"x": x, "t": t})[0]


def _openvino(path):
    """run(x, t) -> eps of OpenVINO on the CPU, float32 (its default on CPUs with bfloat16 or AMX is
    bfloat16), compiled once per input shape."""
    import openvino as ov

    core, compiled = ov.Core(), {}
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": len(os.sched_getaffinity(0))}

    def run(x, t):
        if x.shape not in compiled:
            model = core.read_model(str(path))
            model.reshape({"x": list(x.shape), "t": [x.shape[0]]})
            compiled[x.shape] = core.compile_model(model, "CPU", config)
        return compiled[x.shape]({"x": x, "t": t})[0]

    return run


def diffusers_module(weights):
    """(DiffusionConfig, UNetConfig, diffusers' UNet2DModel holding `weights`, float32, eval mode)."""
    import numpy as np
    import torch
    from diffusers import UNet2DModel

    from ddpm_jax.convert.diffusers_format import DIFFUSERS_TABLE, unet_config_to_diffusers
    from ddpm_jax.convert.mapping import from_flax, key_table
    from ddpm_jax.weights import flatten_params, load_weights

    dcfg, ucfg, params = load_weights(weights)
    unet = UNet2DModel(**unet_config_to_diffusers(ucfg))
    state = from_flax(flatten_params(params), key_table(DIFFUSERS_TABLE, ucfg))
    unet.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return dcfg, ucfg, unet.eval()


def _diffusers_unet(weights, device, variant: Variant | None = None):
    """(DiffusionConfig, UNetConfig, eps(x NCHW float32, t) -> float32) of diffusers'
    UNet2DModel on `weights`: in the variant's precision (bfloat16 weights and
    inputs on the CPU, autocast on a GPU; torch.compile'd when asked), or in
    float64 when `variant` is None (the parity reference)."""
    import torch

    dcfg, ucfg, unet = diffusers_module(weights)
    unet = unet.to(device)
    if variant is None:
        unet = unet.double()
        return dcfg, ucfg, lambda x, t: unet(x.double(), t).sample
    bf16 = variant.precision == "bfloat16"
    cast = bf16 and device == "cpu"
    net = unet.to(torch.bfloat16) if cast else unet
    net = torch.compile(net) if variant.compiled else net

    def eps(x, t):
        if bf16 and not cast:
            with torch.autocast(device, dtype=torch.bfloat16):
                return net(x, t).sample.float()
        return net(x.to(torch.bfloat16) if cast else x, t).sample.float()

    return dcfg, ucfg, eps


def _torch_scheduler(dcfg):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=dcfg.num_diffusion_timesteps,
        beta_start=dcfg.beta_start,
        beta_end=dcfg.beta_end,
        beta_schedule="linear",
        clip_sample=True,
        variance_type="fixed_large" if dcfg.model_var_type == "fixedlarge" else "fixed_small",
    )
    sched.set_timesteps(dcfg.num_diffusion_timesteps)
    return sched


def _peak_rss_mb() -> float:
    """This process's peak RSS so far. VmHWM starts afresh at exec; ru_maxrss
    (the fallback off Linux) can carry the parent's peak over."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_variant(args, plan):
    """Everything `plan` asks of one variant, in this one process: per-step
    times (re-timed while the spread or the load is high), whole chains,
    and eps on the parity inputs against the reference's."""
    variant = VARIANTS[plan["variant"]]
    runner = RUNNERS.get(variant.framework, EngineRunner)(variant, args.device)
    out = dict(device=runner.device, runs=[], chains=[], skipped=[])
    for preset, n in plan["steps"]:
        if time.time() > plan["deadline"]:
            out["skipped"].append(dict(kind="step", preset=preset, batch=n))
            continue
        chunk, extras = runner.step(plan["weights"][preset], n, args.steps, args.reps)
        first, best, attempts = seconds_of(chunk, 1)[0], None, 0
        while attempts <= args.retries:
            attempts += 1
            load = os.getloadavg()[0]
            times = [t / args.steps for t in seconds_of(chunk, args.reps)]
            if best is None or statistics.median(times) < statistics.median(best):
                best = times
            if _spread(times) <= args.max_spread and load <= 1.5 * (os.cpu_count() or 1):
                break
        compile_s = first - statistics.median(best) * args.steps
        out["runs"].append(
            dict(
                preset=preset,
                batch=n,
                step_s=best,
                attempts=attempts,
                load=load,
                compile_s=compile_s if variant.framework == "jax" or variant.compiled else None,
                peak_rss_mb=_peak_rss_mb(),
                device_peak_mb=runner.peak_mb(),
                **extras,
            )
        )
    for preset, n in plan["chain"]:
        if time.time() > plan["deadline"]:
            out["skipped"].append(dict(kind="chain", preset=preset, batch=n))
            continue
        run, steps = runner.chain(plan["weights"][preset], n)
        first, warm = seconds_of(run, 2)
        out["chains"].append(dict(preset=preset, batch=n, steps=steps, first_s=first, warm_s=warm))
    if plan["parity"] and not variant.compiled:  # compiled: the same math as eager
        import numpy as np

        with np.load(plan["parity"]["reference"]) as ref:
            refs = [ref[k] for k in sorted(ref.files, key=int)]
        got = runner.parity(plan["weights"][plan["parity"]["preset"]])
        out["parity"] = max(float(np.abs(a - r).max()) for a, r in zip(got, refs))
    return out


def worker_reference(args, plan):
    """diffusers' UNet in float64 on the CPU on every parity input, saved to plan['out']."""
    import numpy as np
    import torch

    _, ucfg, eps = _diffusers_unet(plan["weights"], "cpu")
    outs = {}
    for i, (n, _scale, t, x) in enumerate(_parity_inputs(ucfg)):
        with torch.inference_mode():
            out = eps(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.full((n,), t, dtype=torch.long))
        outs[str(i)] = out.numpy().transpose(0, 2, 3, 1)
    np.savez(plan["out"], **outs)
    return {}


def worker_peak(args, plan):
    """The machine's sustained f32 matmul and 3x3-conv throughput under XLA, GFLOP/s."""
    import jax

    k = jax.random.key(0)
    a = jax.random.normal(k, (2048, 2048))
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    t_mm = statistics.median(seconds_of(lambda: jax.block_until_ready(mm(a)), 5))
    x = jax.random.normal(k, (8, 32, 32, 256))
    w = jax.random.normal(k, (3, 3, 256, 256))
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    jax.block_until_ready(conv(x, w))
    t_conv = statistics.median(seconds_of(lambda: jax.block_until_ready(conv(x, w)), 5))
    return dict(matmul_gflops=2 * 2048**3 / t_mm / 1e9, conv_gflops=2 * 8 * 32 * 32 * 256 * 256 * 9 / t_conv / 1e9)


WORKERS = {"variant": worker_variant, "reference": worker_reference, "peak": worker_peak}


def run_worker(args):
    out = WORKERS[args.worker](args, json.loads(args.plan))
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------- driver


def spawn(worker, plan, args):
    """Run one worker subprocess on `plan`; its RESULT."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--plan",
        json.dumps(plan),
        "--steps",
        str(args.steps),
        "--reps",
        str(args.reps),
        "--retries",
        str(args.retries),
        "--max-spread",
        str(args.max_spread),
        "--device",
        args.device,
    ]
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # jax and torch take the GPU in turn
    env["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    if "variant" in plan and not VARIANTS[plan["variant"]].fast_flags:
        env["DDPM_JAX_CPU_FLAGS"] = "0"  # `import ddpm_jax` would set them (ddpm_jax.cpu_flags)
    preexec = (lambda: os.sched_setaffinity(0, range(args.cpus))) if args.cpus else None
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=preexec)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{worker} {plan.get('variant', '')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def make_weights(preset, folder):
    import jax

    from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig, UNetConfig
    from ddpm_jax.unet import init_params
    from ddpm_jax.weights import save_weights

    ucfg = UNetConfig(**TINY) if preset == "tiny" else UNET_PRESETS[preset]
    dcfg = DiffusionConfig(num_diffusion_timesteps=TINY_T) if preset == "tiny" else DIFFUSION_PRESETS[preset]
    path = Path(folder) / f"{preset}.safetensors"
    save_weights(path, init_params(ucfg, jax.random.key(0)), diffusion_config=dcfg, unet_config=ucfg)
    return str(path)


def _cases(text):
    return [(c.split(":")[0], int(c.split(":")[1])) for c in text.split(",") if c]


def machine_info(args):
    import importlib.metadata as md

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "torch", "diffusers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cpus": os.cpu_count(),
        "pinned_cpus": args.cpus,
        "device": args.device,
        "load_start": os.getloadavg()[0],
        "versions": versions,
        "python": platform.python_version(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="cifar10 batch 1, jax_fast vs torch eager")
    p.add_argument("--preset", choices=("tiny",), help="tiny: every measurement on a tiny UNet, in seconds")
    p.add_argument(
        "--cases", default="cifar10:1,cifar10:8,cifar10:32,lsun:1", help="preset:batch pairs for the float32 variants"
    )
    p.add_argument("--bf16-cases", default="cifar10:1,cifar10:8", help="preset:batch pairs for bfloat16 ones")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS}; "
        "with --preset tiny, all but the torch.compile ones)",
    )
    p.add_argument("--chain", default="", help="preset:batch: also time the whole chain end to end")
    p.add_argument("--parity", default="", help="a preset: eps of every variant vs a float64 reference")
    p.add_argument("--steps", type=int, default=3, help="denoising steps per timed chunk")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per measurement")
    p.add_argument("--retries", type=int, default=2, help="re-timings while the spread or load is high")
    p.add_argument("--max-spread", type=float, default=0.15)
    p.add_argument("--cpus", type=int, default=None, help="pin every worker to this many CPUs")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds: skip what is left once this much time has passed (results so far are kept)",
    )
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--plan", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.cases, args.bf16_cases, args.steps, args.reps, args.retries = "cifar10:1", "", 2, 2, 0
        args.variants = args.variants or "jax_fast,torch"
    if args.preset == "tiny":
        args.cases, args.bf16_cases, args.steps, args.reps, args.retries = "tiny:1", "tiny:1", 2, 2, 0
        args.chain, args.parity = args.chain or "tiny:1", args.parity or "tiny"
        args.variants = args.variants or ",".join(v for v in DEFAULT_VARIANTS.split(",") if not VARIANTS[v].compiled)
    args.variants = args.variants or DEFAULT_VARIANTS
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    results = run_all(args)
    print_table(results)
    return 1 if results["failed"] else 0


def run_all(args):
    """Every measurement the arguments ask for, one worker process per
    variant; written to --json after each."""
    from ddpm_jax.atomic import write_json

    start = time.time()
    deadline = start + args.deadline if args.deadline else float("inf")
    variants = args.variants.split(",")
    results = {
        "machine": machine_info(args),
        "variants": {v: asdict(VARIANTS[v]) for v in variants},
        "command": " ".join(sys.argv),
        "runs": [],
        "chains": [],
        "parity": None,
        "skipped": [],
        "failed": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cpu" and args.preset != "tiny":
            results["machine"].update(spawn("peak", {}, args))
        step_cases = {
            v: _cases(args.cases if VARIANTS[v].precision == "float32" else args.bf16_cases) for v in variants
        }
        presets = {p for cs in step_cases.values() for p, _ in cs} | {p for p, _ in _cases(args.chain)}
        weights = {preset: make_weights(preset, tmp) for preset in presets | ({args.parity} - {""})}
        parity = None
        if args.parity:
            parity = dict(preset=args.parity, reference=str(Path(tmp) / "reference.npz"))
            spawn("reference", dict(weights=weights[args.parity], out=parity["reference"]), args)
            results["parity"] = dict(
                preset=args.parity,
                reference="diffusers UNet2DModel, float64, CPU",
                inputs=dict(t=PARITY_T, scales=PARITY_SCALES, batches=PARITY_BATCHES),
                max_abs_diff={},
            )
        for v in variants:
            if time.time() > deadline:
                results["skipped"].append(dict(variant=v))
                continue
            print(f"measuring {v} ...", file=sys.stderr)
            plan = dict(
                variant=v,
                weights=weights,
                steps=step_cases[v],
                chain=_cases(args.chain),
                parity=parity,
                deadline=deadline,
            )
            try:
                out = spawn("variant", plan, args)
            except RuntimeError as err:  # one engine failing (a missing package, a new version) keeps the others
                print(err, file=sys.stderr)
                results["failed"].append(dict(variant=v, error=str(err)[-3000:]))
                continue
            for key in ("runs", "chains", "skipped"):
                results[key] += [dict(r, variant=v, device=out["device"]) for r in out[key]]
            if "parity" in out:
                results["parity"]["max_abs_diff"][v] = out["parity"]
                results["parity"]["device"] = out["device"]
            if args.json:
                write_json(args.json, results)
    results["total_s"] = time.time() - start
    if args.json:
        write_json(args.json, results)
    return results


def fmt_ms(s):
    return f"{1000 * s:9.1f}" if s is not None else "        -"


def print_table(results):
    m = results["machine"]
    pin = f", pinned to {m['pinned_cpus']}" if m.get("pinned_cpus") else ""
    print(
        f"\nmachine: {m['cpu_model']} ({' '.join(m['cpu_features'])}), {m['cpus']} CPUs{pin}; "
        f"device {m['device']}; load at start {m['load_start']:.1f}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    )
    peak = max(m.get("matmul_gflops", 0), m.get("conv_gflops", 0))
    if peak:
        print(
            f"measured under XLA: f32 matmul {m['matmul_gflops']:.0f} GFLOP/s, 3x3 conv {m['conv_gflops']:.0f} "
            "GFLOP/s; % peak: the UNet's FLOPs as written per step time over the better of the two; "
            "% floor: the FLOPs of the program that runs (Winograd's) at that peak, over the step time"
        )
    head = (
        f"{'preset':8} {'batch':>5} {'variant':18} {'ms/step':>9} {'spread':>6} {'compile s':>9} "
        f"{'RSS MB':>7} {'dev MB':>7} {'% peak':>7} {'% floor':>7} {'sampler':>8}"
    )
    print(head)
    print("-" * len(head))
    by_case = {}
    for r in results["runs"]:
        step = statistics.median(r["step_s"])
        frac = f"{100 * r['flops'] / step / 1e9 / peak:6.0f}%" if r.get("flops") and peak else ""
        floor = f"{100 * r['run_flops'] / step / 1e9 / peak:6.0f}%" if r.get("run_flops") and peak else ""
        overhead = f"{100 * statistics.median(r['sampler_s']) / step:7.2f}%" if r.get("sampler_s") else ""
        cs, dev = r.get("compile_s"), r.get("device_peak_mb")
        print(
            f"{r['preset']:8} {r['batch']:5d} {r['variant']:18} {fmt_ms(step)} {_spread(r['step_s']):6.0%} "
            f"{(f'{cs:9.1f}' if cs is not None else '        -')} {r['peak_rss_mb']:7.0f} "
            f"{(f'{dev:7.0f}' if dev is not None else '      -')} {frac:>7} {floor:>7} {overhead:>8}"
        )
        by_case.setdefault((r["preset"], r["batch"]), {})[r["variant"]] = step
    print("\nratios (peer time / our time; > 1 means ddpm_jax is faster):")
    for (preset, batch), times in by_case.items():
        for ours, peers in PEERS.items():
            if ours in times:
                got = [f"vs {peer} {times[peer] / times[ours]:.2f}x" for peer in peers if peer in times]
                if got:
                    print(f"  {preset} batch {batch} {ours}: {', '.join(got)}")
    for c in results["chains"]:
        print(
            f"whole chain {c['preset']} batch {c['batch']}, {c['steps']} steps, {c['variant']}: "
            f"{c['first_s']:.1f} s first (with compilation), {c['warm_s']:.1f} s warm"
        )
    if results["parity"]:
        par = results["parity"]
        print(
            f"parity on {par.get('device', '-')} ({par['preset']}; vs {par['reference']}; "
            f"t {list(par['inputs']['t'])}, "
            f"scales {list(par['inputs']['scales'])}, batches {list(par['inputs']['batches'])}), max |eps diff|:"
        )
        for v, d in par["max_abs_diff"].items():
            print(f"  {v:18} {d:.2e}")
    for f in results["failed"]:
        print(f"{f['variant']} failed: {(f['error'].strip().splitlines() or ['?'])[-1]}")
    if results["skipped"]:
        print(f"skipped for the deadline: {len(results['skipped'])} measurements (listed in the JSON)")


if __name__ == "__main__":
    sys.exit(main())
