#!/usr/bin/env bash
# The GPU table: ddpm_jax vs diffusers in PyTorch on one NVIDIA GPU, in one go (under 8 minutes).
#
#   bench/gpu.sh                   # on the GPU machine, from the repository's root
#   bench/gpu.sh --cpu-dry-run     # every step of it on a tiny UNet on this CPU, to check the script
#
# Options: --out DIR (default: bench-gpu-out) gets gpu.json and gpu.txt (the printed table);
# --wheels DIR (default: .whl) holds the wheels to install where a package is missing;
# --variants LIST overrides bench/sampling.py's variants, --cases LIST its cases (float32 and bfloat16),
# --deadline S its time limit in seconds; PYTHON (default: python3) runs it all.
#
# It runs bench/sampling.py with: the cifar10 preset at batch 1, 64 and 256 and the lsun preset
# at batch 1 and 8; per-step times of ddpm_jax in float32, bfloat16 and mixed_bf16 against
# PyTorch eager and torch.compile in float32 and under bfloat16 autocast, with compile times and
# peak device memory; the whole 1000-step chain at batch 1 end to end (cifar10); and the parity
# check of tests/test_fast_path.py on the GPU, in each precision, against diffusers' UNet in
# float64 on the CPU. A --deadline keeps it under 8 minutes: what does not fit is listed as skipped.
#
# The machine needs JAX with CUDA, PyTorch with CUDA, flax and optax, and nothing fetched. diffusers
# travels as a wheel; make it where pip works, in the repository's root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1
# ddpm_jax itself is installed from this checkout without its dependencies, so the machine's
# own jax, flax and torch are the ones measured.
set -euo pipefail

out=bench-gpu-out
wheels=.whl
dry_run=0
variants=jax_xla,torch,torch_compile,jax_bf16,torch_bf16,torch_compile_bf16,jax_mixed_bf16
cases=cifar10:1,cifar10:64,cifar10:256,lsun:1,lsun:8
deadline=420
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry-run) dry_run=1 ;;
        --out) out="$2"; shift ;;
        --wheels) wheels="$2"; shift ;;
        --variants) variants="$2"; shift ;;
        --cases) cases="$2"; shift ;;
        --deadline) deadline="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"

if [ "$dry_run" = 1 ]; then
    args=(--device cpu --preset tiny)
else
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$here"
    if ! "$python" -c "import diffusers" 2>/dev/null; then
        "$python" -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu-device.txt"
    args=(--device gpu --cases "$cases" --bf16-cases "$cases" --chain cifar10:1 --parity cifar10
          --steps 5 --reps 3 --retries 0 --deadline "$deadline")
fi
"$python" "$here/bench/sampling.py" "${args[@]}" --variants "$variants" --json "$out/gpu.json" | tee "$out/gpu.txt"
