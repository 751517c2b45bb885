"""The fast CPU path and the precisions: Winograd convolutions against a float64
direct convolution, the run-param layout, the fast UNet against the plain one
(trained and random weights), mixed_bf16, and the XLA flags."""

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import DIFFUSION_PRESETS, UNET_PRESETS, Diffusion, batched_matmul, cpu_flags, group_norm, winograd
from ddpm_jax.ops import (
    AUTO_MIN_CHANNELS,
    BF16_WINOGRAD,
    CPU_MICRO_PIXELS,
    CPU_WINOGRAD,
    CPU_WINOGRAD_SMALL,
    SMALL_CALL_PIXELS,
    Ops,
    choose_ops,
    in_micro_batches,
    micro_batch,
)
from ddpm_jax.ops import per_call as images_per_call
from ddpm_jax.run_layout import layout_params
from ddpm_jax.unet import init_params
from ddpm_jax.weights import flatten_params

from .helpers import CIFAR_SHAPED_UNET, TINY_DIFFUSION, TINY_UNET, random_params

PARITY_T = (0, 17, 500, 999)
# The suite does not set the fast path's XLA flags; one test checks the warning.
pytestmark = pytest.mark.filterwarnings("ignore:the fast CPU path runs without:RuntimeWarning")


def direct_conv_f64(x, g):
    """3x3 stride-1 "SAME" correlation in float64: a sum of 9 shifted matmuls."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(xp[:, dy : dy + h, dx : dx + w] @ g[dy, dx] for dy in range(3) for dx in range(3))


@pytest.mark.parametrize("m, size, tol", [(2, 4, 2e-6), (2, 8, 2e-6), (4, 8, 2e-5), (4, 16, 2e-5)])
def test_winograd_conv_matches_a_float64_direct_convolution(m, size, tol):
    rng = np.random.default_rng(m + size)
    x = rng.standard_normal((2, size, size, 5)).astype(np.float32)
    g = rng.standard_normal((3, 3, 5, 7)).astype(np.float32)
    out = np.asarray(jax.jit(winograd.conv, static_argnums=2)(x, winograd.transform_kernel(g, m), m))
    ref = direct_conv_f64(x, g)
    assert out.shape == ref.shape == (2, size, size, 7)
    assert np.abs(out - ref).max() < tol * np.abs(ref).max()


def test_kernel_transform_on_host_and_traced_agree_and_bad_input_is_named():
    g = np.random.default_rng(0).standard_normal((3, 3, 4, 2)).astype(np.float32)
    for m, a in ((2, 4), (4, 6)):
        host = winograd.transform_kernel(g, m)
        traced = jax.jit(winograd.transform_kernel, static_argnums=1)(jnp.asarray(g), m)
        assert host.shape == traced.shape == (a, a, 4, 2) and host.dtype == np.float32
        np.testing.assert_allclose(host, traced, rtol=1e-5, atol=1e-6)
        # float32 on the host, float64 in and out: the same U to float32's rounding
        exact = winograd.transform_kernel(g.astype(np.float64), m)
        assert exact.dtype == np.float64
        assert np.abs(host - exact).max() < 3e-7 * np.abs(exact).max()
    with pytest.raises(ValueError, match=r"Winograd tile m=3 is not supported; valid: 2, 4"):
        winograd.transform_kernel(g, 3)
    with pytest.raises(ValueError, match=r"3x3 HWIO kernel .* got shape \(1, 1, 4, 2\)"):
        winograd.transform_kernel(g[:1, :1], 2)
    with pytest.raises(ValueError, match="divisible by 4, got 6x6"):
        winograd.conv(jnp.zeros((1, 6, 6, 4)), winograd.transform_kernel(g, 4), 4)


def test_policy_picks_the_tile_by_map_size_channels_and_stride():
    ops = Ops(CPU_WINOGRAD)
    assert ops.winograd_tile((1, 32, 32, 128), 128, 1) == 4
    assert ops.winograd_tile((8, 16, 16, 256), 256, 1) == 4
    assert ops.winograd_tile((8, 8, 8, 256), 256, 1) == 2
    assert ops.winograd_tile((1, 4, 4, 256), 512, 1) == 2
    assert ops.winograd_tile((1, 2, 2, 256), 256, 1) == 0  # too small for any tile
    assert ops.winograd_tile((1, 32, 32, 128), 128, 2) == 0  # strided: XLA's
    assert ops.winograd_tile((1, 32, 32, 3), 128, 1) == 0  # conv_in
    assert ops.winograd_tile((1, 32, 32, 128), 3, 1) == 0  # conv_out
    assert Ops().winograd_tile((1, 32, 32, 128), 128, 1) == 0
    # "auto": Winograd on the CPU only, float32 and mixed_bf16, from AUTO_MIN_CHANNELS up.
    fast = choose_ops("float32", "auto", "cpu")
    assert fast == Ops(CPU_WINOGRAD, min_channels=AUTO_MIN_CHANNELS)
    assert choose_ops("float32", "auto", "gpu") == Ops()
    assert choose_ops("float32", "xla", "cpu") == Ops()
    assert choose_ops("float32", "winograd", "gpu") == Ops(CPU_WINOGRAD)
    assert choose_ops("bfloat16", "auto", "cpu") == Ops()
    assert choose_ops("mixed_bf16", "auto", "cpu") == Ops(
        BF16_WINOGRAD, min_channels=AUTO_MIN_CHANNELS, dot_dtype="bfloat16"
    )
    assert choose_ops("mixed_bf16", "xla", "tpu") == Ops(dot_dtype="bfloat16")
    # Calls on one or two 32x32 images (float32): F(2x2) on 16x16 maps, XLA's on 4x4.
    assert SMALL_CALL_PIXELS == 2 * 32 * 32
    small = choose_ops("float32", "auto", "cpu", call_pixels=SMALL_CALL_PIXELS)
    assert small == Ops(CPU_WINOGRAD_SMALL, min_channels=AUTO_MIN_CHANNELS)
    assert choose_ops("float32", "auto", "cpu", call_pixels=SMALL_CALL_PIXELS + 1) == fast
    assert [small.winograd_tile((1, s, s, 256), 256, 1) for s in (32, 16, 8, 4)] == [4, 2, 2, 0]
    assert choose_ops("float32", "xla", "cpu", call_pixels=1) == Ops()
    assert choose_ops("mixed_bf16", "auto", "cpu", call_pixels=1) == choose_ops("mixed_bf16", "auto", "cpu")


def test_run_params_are_an_inference_layout_of_untouched_params(tiny_params):
    m = Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="winograd")
    plain, run = flatten_params(m.params), flatten_params(m.run_params)
    assert run.keys() == plain.keys()
    assert all(np.array_equal(plain[k], flatten_params(tiny_params)[k]) for k in plain)
    changed = {k: run[k].shape for k in run if run[k].shape != plain[k].shape}
    # 8x8 maps (level 0, 32 channels) and 4x4 maps (level 1 and mid) take F(2x2): 4x4 kernels.
    assert changed["down_0/block_0/conv1/kernel"] == (4, 4, 32, 32)
    assert changed["up_1/upsample/conv/kernel"] == (4, 4, 64, 64)
    assert changed["mid/block_1/conv2/kernel"] == (4, 4, 64, 64)
    assert changed["up_1/block_0/conv1/kernel"] == (4, 4, 128, 64)
    # Every other 3x3 conv too (17); conv_in, conv_out and the strided conv stay 3x3.
    conv3x3 = [k for k, a in plain.items() if a.ndim == 4]
    assert sorted(changed) == sorted(
        set(conv3x3) - {"conv_in/kernel", "conv_out/kernel", "down_0/downsample/conv/kernel"}
    )
    assert len(changed) == 17
    u = run["down_0/block_0/conv1/kernel"]
    np.testing.assert_allclose(
        u, winograd.transform_kernel(np.asarray(plain["down_0/block_0/conv1/kernel"]), 2), rtol=1e-6
    )
    # with_params lays the new params out the same way.
    other = random_params(TINY_UNET, seed=7)
    again = m.with_params(other)
    np.testing.assert_allclose(
        flatten_params(again.run_params)["mid/block_1/conv2/kernel"],
        flatten_params(layout_params(TINY_UNET, m.model.ops, other))["mid/block_1/conv2/kernel"],
    )


def _eps_fn(model):
    return jax.jit(lambda p, x, t: model.eps(x, t, params=p))


def _max_eps_gap(fast, plain, batches=(1, 8)):
    """Max |eps_fast - eps_plain| over t in PARITY_T, x of scale 1 and 0.01, the given batches,
    each on the run params a call of that batch takes."""
    f_fast, f_plain = _eps_fn(fast), _eps_fn(plain)
    rng = np.random.default_rng(0)
    gap = 0.0
    for n in batches:
        for scale in (1.0, 0.01):
            x = (scale * rng.standard_normal((n, *plain.image_shape))).astype(np.float32)
            for t in PARITY_T:
                tt = np.full((n,), t, np.int32)
                a = np.asarray(f_fast(fast.run_params_for(n), x, tt))
                b = np.asarray(f_plain(plain.run_params_for(n), x, tt))
                assert np.all(np.isfinite(a)) and np.abs(b).max() > 0.1
                gap = max(gap, float(np.abs(a - b).max()))
    return gap


def test_fast_path_matches_the_plain_unet_on_the_bundled_trained_model():
    plain = Diffusion.from_pretrained("digits", conv="xla")
    fast = plain.respaced(plain.num_timesteps, conv="winograd")
    assert fast.model.ops.winograd and not plain.model.ops.winograd
    # 16x16 maps run F(4x4) (6x6 kernels), 8x8 and 4x4 maps F(2x2) (4x4): both tiles in one model.
    assert {a.shape[0] for a in flatten_params(fast.run_params).values() if a.ndim == 4} == {3, 4, 6}
    # Up to 8 digits per call (2048 pixels): F(2x2) on 16x16 and 8x8 maps, XLA's on 4x4.
    assert fast.run_params_for(8) is fast.run_params_for(1) is not fast.run_params_for(9)
    assert {a.shape[0] for a in flatten_params(fast.run_params_for(1)).values() if a.ndim == 4} == {3, 4}
    # Laying the kernels out made ddpm_jax's CPU kernels ready; the fast UNet runs them, the plain one not.
    x, t = np.zeros((1, *plain.image_shape), np.float32), np.zeros((1,), np.int32)
    program = _eps_fn(fast).lower(fast.run_params_for(1), x, t).as_text()
    assert batched_matmul.TARGET in program and group_norm.TARGET in program
    assert group_norm.TARGET not in _eps_fn(plain).lower(plain.run_params_for(1), x, t).as_text()
    assert 0 < _max_eps_gap(fast, plain, batches=(1, 9)) < 1e-4


@pytest.mark.slow
def test_fast_path_matches_the_plain_unet_on_a_cifar10_shaped_model():
    params = init_params(CIFAR_SHAPED_UNET, jax.random.key(3))
    plain = Diffusion(
        diffusion_config=DIFFUSION_PRESETS["cifar10"], unet_config=CIFAR_SHAPED_UNET, params=params, conv="xla"
    )
    fast = Diffusion(
        diffusion_config=DIFFUSION_PRESETS["cifar10"], unet_config=CIFAR_SHAPED_UNET, params=params, conv="winograd"
    )
    assert {a.shape[0] for a in flatten_params(fast.run_params).values() if a.ndim == 4} == {3, 4, 6}
    assert 0 < _max_eps_gap(fast, plain, batches=(2,)) < 1e-4


@pytest.mark.slow
def test_auto_fast_path_matches_the_plain_unet_on_the_cifar10_preset():
    params = init_params(UNET_PRESETS["cifar10"], jax.random.key(0))
    plain = Diffusion(
        diffusion_config=DIFFUSION_PRESETS["cifar10"], unet_config=UNET_PRESETS["cifar10"], params=params, conv="xla"
    )
    fast = Diffusion(
        diffusion_config=DIFFUSION_PRESETS["cifar10"], unet_config=UNET_PRESETS["cifar10"], params=params
    )  # auto on the CPU
    assert fast.model.ops.winograd
    # One image per call: F(4x4) on 32x32 maps, F(2x2) on 16x16 and 8x8, XLA's on 4x4.
    small = flatten_params(fast.run_params_for(1))
    assert small["down_0/block_0/conv1/kernel"].shape[:2] == (6, 6)
    assert small["down_1/block_1/conv1/kernel"].shape[:2] == (4, 4)
    assert small["down_3/block_0/conv1/kernel"].shape[:2] == (3, 3)
    assert flatten_params(fast.run_params)["down_1/block_1/conv1/kernel"].shape[:2] == (6, 6)
    assert 0 < _max_eps_gap(fast, plain) < 1e-4


@pytest.mark.slow
def test_fast_and_plain_chains_end_close():
    plain = Diffusion.from_pretrained("digits", conv="xla").respaced(10, sampler="ddim")
    fast = plain.respaced(10, sampler="ddim", conv="winograd")
    a, b = np.asarray(fast.denoise(4, key=1)), np.asarray(plain.denoise(4, key=1))
    assert np.abs(a - b).max() < 1e-3 and np.abs(b).max() > 0.5


def test_mixed_bf16_casts_kernels_once_and_stays_near_float32():
    f32 = Diffusion.from_pretrained("digits", conv="xla")
    mixed = f32.respaced(f32.num_timesteps, precision="mixed_bf16")
    assert mixed.model.ops.dot_dtype == "bfloat16" and mixed.dtype == jnp.float32
    for name, a in flatten_params(mixed.run_params).items():
        assert a.dtype == (jnp.bfloat16 if name.endswith("/kernel") else jnp.float32), name
    x = np.random.default_rng(0).standard_normal((2, *f32.image_shape)).astype(np.float32)
    t = np.array([17, 500], np.int32)
    # One image at a time: float32's program is then the one the test above compiled.
    f_mixed, f_f32 = _eps_fn(mixed), _eps_fn(f32)
    a = np.concatenate([np.asarray(f_mixed(mixed.run_params, x[i : i + 1], t[i : i + 1])) for i in range(2)])
    b = np.concatenate([np.asarray(f_f32(f32.run_params, x[i : i + 1], t[i : i + 1])) for i in range(2)])
    assert a.dtype == np.float32 and 0 < np.abs(a - b).max() < 0.1 * np.abs(b).max()
    x0 = np.asarray(mixed.respaced(5, sampler="ddim").denoise(2, key=0))
    assert np.all(np.isfinite(x0)) and np.abs(x0).max() <= 1


def test_precision_and_conv_are_checked_and_kept_by_respaced(tiny_params):
    with pytest.raises(ValueError, match="unknown precision 'float16'; valid: float32, bfloat16, mixed_bf16"):
        Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, precision="float16")
    with pytest.raises(ValueError, match="unknown conv 'fft'; valid: auto, xla, winograd"):
        Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="fft")
    bf16 = Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, precision="bfloat16")
    assert bf16.dtype == jnp.bfloat16 and bf16.respaced(5).dtype == jnp.bfloat16
    m = Diffusion(
        diffusion_config=TINY_DIFFUSION,
        unet_config=TINY_UNET,
        params=tiny_params,
        precision="mixed_bf16",
        conv="winograd",
    )
    r = m.respaced(5)
    assert (r.precision, r.conv, r.model.ops) == ("mixed_bf16", "winograd", m.model.ops)
    assert r.run_params is m.run_params  # the same layout is made once, not per chain
    other = m.respaced(5, precision="float32")
    assert other.run_params is not m.run_params
    assert flatten_params(other.run_params)["conv_out/kernel"].dtype == jnp.float32


# --------------------------------------------------------------------------- micro-batches


def _scan_lengths(fn, *args) -> list[int]:
    """The lengths of the scans (lax.map) at the top of fn's jaxpr."""
    return [e.params["length"] for e in jax.make_jaxpr(fn)(*args).eqns if e.primitive.name == "scan"]


@pytest.mark.parametrize(
    "n, size, calls, per_call", [(1, 4, 0, 1), (4, 4, 0, 4), (5, 4, 2, 3), (9, 4, 3, 3), (11, 4, 3, 4)]
)
def test_in_micro_batches_splits_evenly_pads_and_gives_the_whole_batchs_result(n, size, calls, per_call):
    traced = []

    def fn(x, t):  # per image: depends on its own x and t only
        traced.append(x.shape[0])
        return x * t[:, None, None, None] + x.sum(axis=(1, 2, 3), keepdims=True)

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2, 2, 3)).astype(np.float32)
    t = rng.integers(0, 1000, n).astype(np.int32)
    out = in_micro_batches(fn, x, t, size)
    assert traced == [per_call] and out.shape == x.shape and images_per_call(n, size) == per_call
    np.testing.assert_allclose(out, fn(x, t), rtol=1e-6)
    assert _scan_lengths(lambda x, t: in_micro_batches(fn, x, t, size), x, t) == ([calls] if calls else [])
    assert _scan_lengths(lambda x, t: in_micro_batches(fn, x, t, 0), x, t) == []  # 0: one call


def test_a_call_on_few_pixels_takes_its_own_layout_made_once_and_samples_the_same(tiny_params):
    fast = Diffusion(
        diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="winograd"
    ).respaced(4, sampler="ddim")
    plain = fast.respaced(4, sampler="ddim", conv="xla")
    big, small = flatten_params(fast.run_params), flatten_params(fast.run_params_for(1))
    # 8x8 images: up to 32 per call are small; 8x8 maps F(2x2) in both, 4x4 maps XLA's when small.
    assert fast.run_params_for(32) is fast.run_params_for(1) and fast.run_params_for(33) is fast.run_params
    assert big["down_0/block_0/conv1/kernel"].shape == small["down_0/block_0/conv1/kernel"].shape == (4, 4, 32, 32)
    assert big["mid/block_1/conv2/kernel"].shape == (4, 4, 64, 64)
    np.testing.assert_array_equal(
        small["mid/block_1/conv2/kernel"], flatten_params(tiny_params)["mid/block_1/conv2/kernel"]
    )
    # Micro-batches count: 40 images in calls of 4 take the small layout; a respaced model shares it.
    assert fast.respaced(4, micro_batch=4).run_params_for(40) is fast.run_params_for(1)
    assert fast.respaced(4, micro_batch=33).run_params_for(40) is fast.run_params_for(1)  # calls of 20
    assert fast.respaced(2).run_params_for(1) is fast.run_params_for(1)
    assert plain.run_params_for(1) is plain.run_params  # XLA's conv: one layout
    # eps and a chain through the small layout match the plain UNet, and the large layout's batch.
    x = np.random.default_rng(0).standard_normal((40, *fast.image_shape)).astype(np.float32)
    t = np.full((40,), 500, np.int32)
    a, b = np.asarray(fast.eps(x[:1], t[:1])), np.asarray(plain.eps(x[:1], t[:1]))
    assert np.abs(a - b).max() < 1e-5 and np.abs(b).max() > 0.1
    assert np.abs(a - np.asarray(fast.eps(x, t))[:1]).max() < 1e-5
    one, many = np.asarray(fast.denoise(2, key=3)), np.asarray(fast.denoise(40, key=3))
    assert np.abs(one - np.asarray(plain.denoise(2, key=3))).max() < 1e-4 and np.abs(one).max() > 0.5
    assert np.abs(one - many[:2]).max() < 1e-4


def test_micro_batches_hold_a_fixed_number_of_pixels_where_winograd_runs_on_the_cpu(tiny_params):
    fast = Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="winograd")
    plain = fast.respaced(fast.num_timesteps, conv="xla")
    assert jax.default_backend() == "cpu" and CPU_MICRO_PIXELS == 8 * 32 * 32
    assert micro_batch(fast.run_params, 32, 32) == 8 and micro_batch(fast.run_params, 8, 8) == 128
    assert micro_batch(fast.run_params, 256, 256) == 1  # never below one image
    assert micro_batch(plain.run_params, 32, 32) == 0  # XLA's conv gains nothing from them: whole
    assert micro_batch(fast.params, 32, 32) == 0  # untouched 3x3 kernels: no Winograd layout


def test_a_diffusion_in_micro_batches_samples_what_the_whole_batch_does(tiny_params):
    whole = Diffusion(
        diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="winograd", micro_batch=0
    ).respaced(5, sampler="ddim")
    micro = whole.respaced(5, sampler="ddim", micro_batch=3)
    assert (micro.micro_batch, micro.respaced(4).micro_batch, whole.micro_batch) == (3, 3, 0)
    assert (
        micro.model.ops == whole.model.ops
        and flatten_params(micro.run_params).keys() == flatten_params(whole.run_params).keys()
    )
    x = np.random.default_rng(0).standard_normal((8, *whole.image_shape)).astype(np.float32)
    t = np.full((8,), 500, np.int32)
    assert _scan_lengths(micro.eps, x, t) == [3] and _scan_lengths(whole.eps, x, t) == []  # 8 images: 3 + 3 + 2
    a, b = np.asarray(micro.denoise(8, key=1)), np.asarray(whole.denoise(8, key=1))
    assert np.abs(a - b).max() < 1e-5 and np.abs(b).max() > 0.5
    for bad, err in ((-1, ValueError), (2.5, TypeError)):
        with pytest.raises(err, match="micro_batch"):
            whole.respaced(5, micro_batch=bad)


# --------------------------------------------------------------------------- XLA flags


def test_flags_are_added_once_and_a_users_own_setting_wins():
    assert cpu_flags.flags("0.10.2")  # the jaxlib this project pins (pyproject) has them
    assert cpu_flags.flags("0.99.0") == ()
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert cpu_flags.use_cpu_flags(env)
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", *cpu_flags.flags()]
    before = env["XLA_FLAGS"]
    cpu_flags.use_cpu_flags(env)
    assert env["XLA_FLAGS"] == before and cpu_flags.missing(env) == []
    name = cpu_flags.flags()[0].split("=")[0]
    mine = {"XLA_FLAGS": f"{name}=individual_dot"}
    cpu_flags.use_cpu_flags(mine)
    assert mine["XLA_FLAGS"] == f"{name}=individual_dot"


# A fresh process: what `import ddpm_jax` leaves in XLA_FLAGS, and whether a Winograd model warns.
IMPORT_SCRIPT = """
import os, sys, warnings
if sys.argv[1] == "started":
    import jax.numpy as jnp; jnp.zeros(1).block_until_ready()
import ddpm_jax
from ddpm_jax.unet import init_params
from tests.helpers import TINY_DIFFUSION, TINY_UNET
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ddpm_jax.Diffusion(diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=init_params(TINY_UNET,
        __import__("jax").random.key(0)), conv="winograd").run_params  # made on first use: it warns then
print(os.environ.get("XLA_FLAGS", ""))
print(sum("without its XLA flags" in str(w.message) for w in caught))
"""


@pytest.mark.parametrize(
    "case, env, want_flags, warns",
    [
        ("fresh", {}, True, 0),  # a library user who never calls use_cpu_flags gets the fast path
        ("started", {}, False, 1),  # JAX ran before the import: too late, the warning stays
        ("fresh", {"DDPM_JAX_CPU_FLAGS": "0"}, False, 1),  # opted out
    ],
)
def test_importing_ddpm_jax_sets_the_flags_before_the_backend_starts(case, env, want_flags, warns):
    mine = "--xla_cpu_enable_fast_math=false"  # a user's own flag: kept, first
    inherited = {k: v for k, v in os.environ.items() if k != cpu_flags.OPT_OUT}
    full = {**inherited, "XLA_FLAGS": mine, "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, case], env=full, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    flags, warned = out.stdout.strip().splitlines()[-2:]
    assert flags.split() == ([mine, *cpu_flags.flags()] if want_flags else [mine])
    assert int(warned) == warns


def test_late_flags_and_a_fast_path_without_them_warn(monkeypatch, tiny_params):
    jnp.zeros(1).block_until_ready()  # the backend has started
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.warns(RuntimeWarning, match="runs without its XLA flags"):
        assert Diffusion(
            diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="winograd"
        ).run_params  # the layout is made on first use: it warns then
    with pytest.warns(RuntimeWarning, match="already started"):
        assert not cpu_flags.use_cpu_flags()
    with warnings.catch_warnings():  # flags now in the environment: no warning
        warnings.simplefilter("error", RuntimeWarning)
        assert Diffusion(
            diffusion_config=TINY_DIFFUSION, unet_config=TINY_UNET, params=tiny_params, conv="winograd"
        ).run_params  # the layout is made on first use: it warns then


def _ynn_in_dump(folder) -> bool:
    """Whether any optimized HLO in an XLA dump hands work to YNNPACK."""
    texts = [p.read_text() for p in folder.glob("*after_optimizations.txt")]
    assert texts, f"no optimized HLO dumped in {folder}"
    return any("ynn" in t for t in texts)


def test_the_cli_starts_jax_with_the_flags(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))  # compile afresh: it dumps
    dumps = tmp_path / "cli", tmp_path / "plain"
    monkeypatch.setenv("XLA_FLAGS", f"--xla_dump_to={dumps[0]}")
    cmd = [
        sys.executable,
        "-m",
        "ddpm_jax.cli",
        "sample",
        "--model",
        str(saved),
        "--n",
        "1",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "out"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    # The same jaxlib without the flags hands dots and reductions to YNNPACK.
    monkeypatch.setenv("XLA_FLAGS", f"--xla_dump_to={dumps[1]}")
    plain = "import jax, jax.numpy as jnp; jax.jit(lambda a: (a @ a).sum(0))(jnp.ones((64, 64))).block_until_ready()"
    subprocess.run([sys.executable, "-c", plain], check=True, capture_output=True, timeout=120)
    assert _ynn_in_dump(dumps[1]) and not _ynn_in_dump(dumps[0])
