"""Where one UNet step's time goes: ddpm_jax's fast CPU path beside ONNX Runtime on the same graph.

Random weights of a preset's architecture (cifar10 by default), batch --batch. Ours: the UNet
as `Diffusion` runs it (`eps` on the run params: Winograd where the fast path uses it), profiled
with `jax.profiler`; each XLA op is put in a part of the UNet by the module its HLO metadata
names. ONNX Runtime: diffusers' `UNet2DModel` exported with `torch.onnx.export` (checked against
PyTorch's eps first), profiled by ONNX Runtime itself; each node by the module its name holds.
Each profiler adds its own overhead, so the parts are printed in ms per step under the profiler
and as a share of the step, with the step's unprofiled time beside them.

    python bench/step_profile.py                     # cifar10 at batch 1, 20 steps each
    python bench/step_profile.py --batch 8 --reps 10
    python bench/step_profile.py --preset tiny --reps 2 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from sampling import check_engine, cpu_model, make_weights, onnx_unet, onnxruntime_session, seconds_of

PARTS = ("3x3 convolutions", "GroupNorm and swish", "attention", "time embedding", "1x1 shortcuts", "other")

# The module names of each part: ours (ddpm_jax.unet) and diffusers' UNet2DModel.
_OURS = {
    "3x3 convolutions": {"conv1", "conv2", "conv", "conv_in", "conv_out"},
    "GroupNorm and swish": {"norm1", "norm2", "norm", "norm_out", "jit(silu)"},
    "attention": {"q", "k", "v", "proj_out"},
    "time embedding": {"temb", "dense_0", "dense_1", "temb_proj"},
    "1x1 shortcuts": {"nin_shortcut"},
}
_THEIRS = {
    "3x3 convolutions": {"conv1", "conv2", "conv", "conv_in", "conv_out"},
    "GroupNorm and swish": {"norm1", "norm2", "group_norm", "conv_norm_out", "nonlinearity", "conv_act"},
    "attention": {"to_q", "to_k", "to_v", "to_out.0"},
    "time embedding": {"time_proj", "time_embedding", "time_emb_proj"},
    "1x1 shortcuts": {"conv_shortcut"},
}


def part(path: list[str], names: dict, attention_scope: str) -> str:
    """The part of the UNet a module path belongs to: its innermost module with a known name;
    an op directly in an attention block (its softmax, its matmuls) is attention."""
    for name in reversed(path):
        for key, modules in names.items():
            if name in modules:
                return key
    return "attention" if any(name.startswith(attention_scope) for name in path) else "other"


def ours(weights, n, reps, folder):
    """({part: [ms per step, ops per step]}, unprofiled ms per step) of ddpm_jax's fast path."""
    import jax
    import jax.numpy as jnp

    from ddpm_jax import Diffusion

    m = Diffusion.from_pretrained(weights)
    x = jax.random.normal(jax.random.key(1), (n, *m.image_shape))
    t = jnp.full((n,), m.num_timesteps // 2, jnp.int32)
    # One compiled program, timed and profiled; each HLO op's module path from its metadata.
    run = m.run_params_for(n)  # the layout a call on n images takes
    step = jax.jit(lambda p, x, t: m.eps(x, t, params=p)).lower(run, x, t).compile()
    paths = {
        op: name.split("/")
        for op, name in re.findall(
            r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', step.as_text(), re.M
        )
    }
    step(run, x, t).block_until_ready()
    unprofiled = _median_ms(lambda: step(run, x, t).block_until_ready(), reps)
    with jax.profiler.trace(folder):
        for _ in range(reps):
            step(run, x, t).block_until_ready()
    (trace,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
    parts = collections.defaultdict(lambda: [0.0, 0])
    for event in json.load(gzip.open(trace))["traceEvents"]:
        op = (event.get("args") or {}).get("hlo_op")
        if event.get("ph") == "X" and op:
            p = parts[part(paths.get(op, []), _OURS, "attn_")]
            p[0] += event["dur"] / 1000 / reps
            p[1] += 1 / reps
    return dict(parts), unprofiled


def onnx_runtime(weights, n, reps, folder):
    """({part: [ms per step, nodes per step]}, unprofiled ms per step) of ONNX Runtime."""
    import numpy as np

    _dcfg, ucfg, unet, path = onnx_unet(weights)
    x = np.random.default_rng(1).standard_normal((n, ucfg.in_channels, ucfg.resolution, ucfg.resolution), np.float32)
    t = np.full((n,), 500, np.int64)
    plain = onnxruntime_session(path)
    check_engine("onnxruntime", lambda x, t: plain.run(None, {"x": x, "t": t})[0], unet, ucfg)
    plain.run(None, {"x": x, "t": t})
    unprofiled = _median_ms(lambda: plain.run(None, {"x": x, "t": t}), reps)
    profiled = onnxruntime_session(path, profile_prefix=f"{folder}/ort")
    profiled.run(None, {"x": x, "t": t})  # warm-up, left out below
    for _ in range(reps):
        profiled.run(None, {"x": x, "t": t})
    events = json.loads(Path(profiled.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[-reps]["ts"] if len(runs) >= reps else 0  # only the timed runs' nodes
    parts = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            p = parts[part(e["name"].split("/"), _THEIRS, "attentions.")]
            p[0] += e["dur"] / 1000 / reps
            p[1] += 1 / reps
    return dict(parts), unprofiled


def _median_ms(fn, reps):
    return 1000 * statistics.median(seconds_of(fn, reps))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar10", help="UNet architecture (random weights): cifar10, lsun, tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=20, help="profiled steps of each")
    p.add_argument("--json", help="also write the parts to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(args.preset, tmp)
        results = {
            "ddpm_jax": ours(weights, args.batch, args.reps, f"{tmp}/jax"),
            "onnxruntime": onnx_runtime(weights, args.batch, args.reps, tmp),
        }
    print(f"{args.preset} at batch {args.batch}, {cpu_model()}: ms per step under each profiler (share, ops)")
    print(f"{'part':22}" + "".join(f"{name:>28}" for name in results))
    for name in PARTS:
        cells = []
        for parts, _ in results.values():
            ms, ops = parts.get(name, [0.0, 0])
            total = sum(v[0] for v in parts.values())
            cells.append(f"{ms:9.2f} ({100 * ms / total:4.1f}%, {ops:4.0f} ops)")
        print(f"{name:22}" + "".join(f"{c:>28}" for c in cells))
    print(
        f"{'sum of ops':22}"
        + "".join(f"{sum(v[0] for v in parts.values()):9.2f}{'':19}" for parts, _ in results.values())
    )
    print(f"{'step, unprofiled':22}" + "".join(f"{ms:9.2f}{'':19}" for _, ms in results.values()))
    if args.json:
        out = {k: dict(parts=parts, unprofiled_ms=ms) for k, (parts, ms) in results.items()}
        Path(args.json).write_text(
            json.dumps(dict(preset=args.preset, batch=args.batch, cpu=cpu_model(), **out), indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
