"""ddpm_jax's CPU kernel for Winograd's products (`ddpm_jax.batched_matmul`): built once per cache,
run where XLA's batched dot ran with the same products (across threads, under jit, vmap and
grad), and XLA's batched dot where it is turned off or cannot be built."""

import functools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import batched_matmul, group_norm, native, winograd
from ddpm_jax.batched_matmul import TARGET

from .test_fast_path import direct_conv_f64


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert native.prepare(), "the kernel could not be built here: see the warning logged"


def _runs_the_kernel(f, *args) -> bool:
    return TARGET in jax.jit(f).lower(*args).as_text()


def _operands(seed, batch, m, k, n):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((*batch, m, k)).astype(np.float32),
        rng.standard_normal((*batch, k, n)).astype(np.float32),
    )


@pytest.mark.parametrize(
    "batch, m, k, n",
    [
        ((36,), 16, 256, 256),  # F(4x4) on one image's 16x16 map
        ((2, 3), 13, 300, 70),  # rows, depth and columns past whole tiles and K blocks
        ((3,), 5, 40, 40),  # fewer columns than a tile: one vector at a time, then single floats
        ((1,), 1, 1, 1),
        ((5,), 4, 0, 64),  # nothing to sum: zeros
        ((4, 4), 64, 128, 16),
        ((2,), 257, 150, 40),  # several row blocks (where the CPU's kernel blocks rows), then 1-5 rows
    ],
)
def test_the_kernel_gives_a_float64_matmuls_products(batch, m, k, n):
    a, b = _operands(m + k + n, batch, m, k, n)
    assert _runs_the_kernel(batched_matmul.batched_matmul, a, b)
    got = np.asarray(jax.jit(batched_matmul.batched_matmul)(a, b))
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert got.shape == ref.shape == (*batch, m, n)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.sqrt(max(k, 1)))


def test_calls_from_several_threads_at_once_each_get_their_own_products():
    f = jax.jit(batched_matmul.batched_matmul)
    pairs = [_operands(seed, (16,), 64, 256, 256) for seed in range(6)]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda ab: np.asarray(f(*ab)), pairs))
    for (a, b), g in zip(pairs, got):
        np.testing.assert_allclose(g, a @ b, rtol=0, atol=1e-3)


def test_vmap_and_gradients_are_those_of_xlas_dot():
    a, b = _operands(1, (3,), 8, 32, 16)
    stack = np.stack([a, 2 * a])

    def xla(a, b):
        return jnp.matmul(a, b, precision="highest")

    batched = jax.vmap(batched_matmul.batched_matmul, in_axes=(0, None))
    assert _runs_the_kernel(batched, stack, b)
    np.testing.assert_allclose(batched(stack, b), jax.vmap(xla, in_axes=(0, None))(stack, b), atol=1e-4)

    w = np.random.default_rng(2).standard_normal((3, 8, 16)).astype(np.float32)
    grads = jax.grad(lambda a, b: jnp.sum(batched_matmul.batched_matmul(a, b) * w), argnums=(0, 1))(a, b)
    want = jax.grad(lambda a, b: jnp.sum(xla(a, b) * w), argnums=(0, 1))(a, b)
    for g, r in zip(grads, want):
        np.testing.assert_allclose(g, r, atol=1e-4)


def test_other_dtypes_keep_xlas_dot():
    a, b = (x.astype(jnp.bfloat16) for x in _operands(3, (4,), 8, 16, 8))
    assert not _runs_the_kernel(batched_matmul.batched_matmul, a, b)
    assert not _runs_the_kernel(lambda a, b: batched_matmul.batched_matmul(a, b, jnp.float32), a, b)
    assert batched_matmul.batched_matmul(a, b, jnp.float32).dtype == jnp.float32


@pytest.mark.parametrize("m, size", [(2, 8), (4, 16)])
def test_winograd_conv_runs_its_products_on_the_kernel(m, size):
    rng = np.random.default_rng(m)
    x = rng.standard_normal((1, size, size, 128)).astype(np.float32)
    g = rng.standard_normal((3, 3, 128, 128)).astype(np.float32)
    u = winograd.transform_kernel(g, m)
    conv = jax.jit(winograd.conv, static_argnums=2)
    assert TARGET in conv.lower(x, u, m).as_text()
    ref = direct_conv_f64(x, g)
    assert np.abs(np.asarray(conv(x, u, m)) - ref).max() < 2e-5 * np.abs(ref).max()


PROBE = """
import json, logging, sys
import jax, numpy as np
from ddpm_jax import batched_matmul, native, winograd
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
ready = native.prepare()
x = np.random.default_rng(0).standard_normal((1, 8, 8, 16)).astype(np.float32)
g = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
conv = jax.jit(winograd.conv, static_argnums=2)
u = winograd.transform_kernel(g, 2)
print(json.dumps(dict(ready=ready, kernel=batched_matmul.TARGET in conv.lower(x, u, 2).as_text(),
                      out=np.asarray(conv(x, u, 2)).tolist())))
"""


def _probe(tmp_path, **env):
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "DDPM_JAX_CACHE": str(tmp_path / "cache"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_built_once_per_cache_then_loaded(tmp_path):
    got, log = _probe(tmp_path)
    assert got["ready"] and got["kernel"] and "building ddpm_jax's CPU kernels" in log
    (lib,) = (tmp_path / "cache" / "native").glob("kernels-*.so")
    built = lib.stat().st_mtime_ns
    again, log = _probe(tmp_path)
    assert again["ready"] and "building" not in log and lib.stat().st_mtime_ns == built
    assert again["out"] == got["out"]


@pytest.mark.parametrize(
    "env, warned",
    [
        (dict(DDPM_JAX_NATIVE="0"), None),  # turned off: no warning
        (dict(CXX="/bin/false"), "failed"),  # no working compiler: said, and nothing kept
        (dict(CXX="/no/such/compiler"), "No such file"),
    ],
)
def test_without_the_kernel_xlas_dot_gives_the_same_convolution(tmp_path, env, warned):
    got, log = _probe(tmp_path, **env)
    assert not got["ready"] and not got["kernel"]
    if warned:
        assert "not available" in log and warned in log and "DDPM_JAX_NATIVE=0" in log
    else:
        assert "not available" not in log
    assert not list((tmp_path / "cache").rglob("*.so"))
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 16)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = direct_conv_f64(x, g)
    assert np.abs(np.asarray(got["out"]) - ref).max() < 2e-5 * np.abs(ref).max()


OTHER_CPU = """
import sys
import jax, numpy as np
from ddpm_jax import batched_matmul, group_norm, native
native.load(sys.argv[1])
native._ready.append(True)
rng = np.random.default_rng(0)
for batch, m, k, n in [((36,), 16, 256, 256), ((2, 3), 13, 300, 70), ((16,), 64, 128, 40), ((2,), 257, 150, 40)]:
    a = rng.standard_normal((*batch, m, k)).astype(np.float32)
    b = rng.standard_normal((*batch, k, n)).astype(np.float32)
    f = jax.jit(batched_matmul.batched_matmul)
    assert batched_matmul.TARGET in f.lower(a, b).as_text()
    np.testing.assert_allclose(f(a, b), a.astype(np.float64) @ b, rtol=0, atol=1e-5 * np.sqrt(k))
for shape, groups in [((1, 16, 16, 128), 32), ((2, 5, 36), 4)]:  # whole vectors; 4 channels past them
    x = rng.standard_normal(shape).astype(np.float32)
    s, b = rng.standard_normal((2, shape[-1])).astype(np.float32)
    f = jax.jit(lambda x, s, b: group_norm.fused(x, s, b, groups, 1e-6, True))
    assert group_norm.TARGET in f.lower(x, s, b).as_text()
    np.testing.assert_allclose(f(x, s, b), group_norm.group_norm(x, s, b, groups, 1e-6, True), rtol=0, atol=2e-5)
print("ok")
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 CPU levels")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])  # AVX2 + FMA (the Zen 1 EPYC's), SSE2
def test_the_kernels_built_for_other_x86_cpus_give_the_same_results(tmp_path, march):
    lib = tmp_path / f"{march}.so"
    native.build(lib, march=march)
    done = subprocess.run([sys.executable, "-c", OTHER_CPU, str(lib)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_xla_dot_traces_xlas_products_whose_flops_xla_counts():
    a, b = _operands(4, (16,), 64, 128, 32)
    with batched_matmul.xla_dot():
        lowered = jax.jit(lambda a, b: batched_matmul.batched_matmul(a, b)).lower(a, b)
    assert TARGET not in lowered.as_text() and lowered.cost_analysis()["flops"] == 2 * 16 * 64 * 128 * 32
    assert _runs_the_kernel(lambda a, b: batched_matmul.batched_matmul(a, b), a, b)  # the kernel again


def test_an_unwritable_cache_is_said_and_xlas_dot_runs(tmp_path):
    blocker = tmp_path / "a file where the cache folder should be"
    blocker.write_text("")
    got, log = _probe(tmp_path, DDPM_JAX_CACHE=str(blocker))
    assert not got["ready"] and not got["kernel"] and "not available" in log and "Not a directory" in log


def test_a_call_the_kernels_cannot_take_says_what_was_wrong():
    # The handlers read XLA's call frame themselves (ddpm_jax/ffi_call.h): a call past the Python
    # wrappers' checks gets XLA's error with the kernel's reason, not a crash.
    assert native.prepare()
    f32 = np.float32
    bad = [
        (TARGET, (2, 3, 5), [np.ones((2, 3, 4), f32), np.ones((2, 5, 5), f32)], {}, "inner dimensions differ"),
        (TARGET, (2, 3, 5), [np.ones((2, 3, 4), np.int32), np.ones((2, 4, 5), f32)], {}, "float32 arrays"),
        (
            group_norm.TARGET,
            (1, 4, 4, 6),
            [np.ones((1, 4, 4, 6), f32), np.ones(6, f32), np.ones(6, f32)],
            {"groups": 4, "eps": f32(1e-6), "swish": True, "pad": 0},
            "equal groups",
        ),
        (
            group_norm.TARGET,
            (1, 4, 4, 6),
            [np.ones((1, 4, 4, 6), f32), np.ones(6, f32), np.ones(6, f32)],
            {"groups": 2, "swish": True, "pad": 0},
            "needs the attributes",
        ),
    ]
    for target, shape, args, attrs, reason in bad:
        call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32))
        with pytest.raises(Exception, match=reason):
            jax.block_until_ready(jax.jit(functools.partial(call, **attrs))(*args))
