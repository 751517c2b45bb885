"""Work and memory that a number from outside sizes are bounded before anything is allocated
(interpolation's lambdas, RePaint's schedule), and no wrong result is silent: a diverged chain
is an error, not a black picture; x_0 outside [-1, 1] is refused."""

from __future__ import annotations

import itertools
import time
import tracemalloc

import numpy as np
import pytest

from ddpm_jax.images import to_uint8
from ddpm_jax.inpainting import MAX_ITERATIONS, jump_schedule, schedule_length
from ddpm_jax.memory import device_bytes, sample_bytes

from .helpers import tiny_diffusion_model

SETTINGS = [
    (steps, jump_length, jump_n_sample)
    for steps, jump_length, jump_n_sample in itertools.product([1, 2, 5, 17, 250], [1, 2, 3, 10], [1, 2, 3, 10])
    if jump_n_sample == 1 or jump_length <= max(1, steps - 1)  # the settings `inpaint` accepts
]


@pytest.mark.parametrize("steps, jump_length, jump_n_sample", SETTINGS)
def test_schedule_length_is_the_schedules(steps, jump_length, jump_n_sample):
    assert schedule_length(steps, jump_length, jump_n_sample) == len(jump_schedule(steps, jump_length, jump_n_sample))


def test_a_huge_repaint_schedule_is_refused_before_it_is_made():
    """The adversarial case: 1000 steps, jumps of 1, 10,000 resamplings: 20 M rows, never built."""
    model = tiny_diffusion_model(T=1000)
    picture, mask = np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), np.float32)
    mask[:4] = 1
    tracemalloc.start()
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"make a chain of 19,979,002 iterations, more than 1,000,000.*4,570"):
        model.inpaint(picture, mask, steps=1000, jump_length=1, jump_n_sample=10_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20 and time.monotonic() - start < 2
    assert schedule_length(1000, 1, 10_000) > MAX_ITERATIONS


def test_more_lambdas_than_memory_holds_are_refused_before_anything_is_allocated(tiny_model):
    too_many = device_bytes() // sample_bytes(tiny_model.unet_config) + 1
    lambdas = np.linspace(0, 1, too_many)
    a = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=rf"len\(lambdas\)={too_many} samples need at least .* interpolate fewer"):
        tiny_model.interpolate(a, a, 5, lambdas)
    with pytest.raises(ValueError, match=rf"len\(lambdas\)={too_many} samples"):
        tiny_model.interpolate_noise(lambdas)


def test_a_diverged_chain_is_an_error_not_a_black_picture(tiny_model, tmp_path):
    x = np.zeros((3, 4, 4, 1), np.float32)
    x[1, 0, 0, 0] = np.nan
    x[2, 1, 1, 0] = np.inf
    for clip in (False, True):
        with pytest.raises(
            ValueError, match=r"2 NaN or infinite values \(in image\(s\) \[1, 2\]\): the chain diverged"
        ):
            to_uint8(x, clip=clip)
    with pytest.raises(ValueError, match="the chain diverged"):
        tiny_model.save(x, str(tmp_path / "{:03}.png"))
    assert list(tmp_path.iterdir()) == []


def test_x0_outside_minus_one_one_is_refused_and_x_t_is_not(tiny_model):
    x = np.full((1, 8, 8, 1), 5.0, np.float32)
    with pytest.raises(ValueError, match=r"x at curr_step=0 is x_0, images in \[-1, 1\], but holds values in \[5, 5\]"):
        tiny_model.diffuse(1, n_steps=1, x=x, curr_step=0)
    assert np.isfinite(np.asarray(tiny_model.diffuse(1, n_steps=1, x=x, curr_step=3))).all()
