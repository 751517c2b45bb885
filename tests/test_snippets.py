"""Every Python snippet and every `ddpm-jax` command of the README and docs/ runs, from the
user's side: each in a fresh working directory, then the files it says it writes exist and
what it says it shows holds.

Up to three runs of a snippet, each a test whose id names the run, the file and the line:

- `quick`: on the model the snippet names (the bundled digits model; a released name loads a
  stand-in, below), with the fewer steps and samples of its spec's `quick`: the default suite,
  Python snippets only (a few, `quick_in_default=False`, in the slow one).
- `docs`: as written, but for its spec's `fixes` (placeholders, ports, a GPU, sizes no CPU
  runs: 50,000 cifar10 samples, 800,000 training steps): `make test-slow`.
- `cifar10`: on the cifar10 architecture with random weights, the snippet's digits model (or
  preset) replaced by a released cifar10 name (its spec's `cifar10`), with the `quick` counts
  (a 1000-step chain of the cifar10 UNet takes minutes on a CPU): `make test-slow`.

The default suite also checks that every `ddpm-jax` command of the docs parses
(`test_documented_commands_parse`) and that every block has a spec or a reason not to run.

Nothing is fetched. A released name (`cifar10`, `ema_cifar10`), a Hub id and the files a
snippet expects the reader to have (a port checkpoint, a diffusers folder, params) are
stand-ins of the cifar10 architecture with random weights (`snippets.StandIns`), found where
the real ones would be (the ddpm_jax cache, huggingface_hub's cache, the working directory);
the Hub's 256x256 models (`google/ddpm-ema-church-256`, `./ddpm-ema-church-256`) are cifar10
stand-ins too, an lsun-size UNet being minutes a step on a CPU.

Python snippets run in this process (`exec`, a fresh namespace), names they use without
defining given by `given` (what the page defined before, or the reader's data: `NAMES`);
bash blocks run their commands in subprocesses, as a shell would. `make`, `pip`, the benchmark
scripts and `cp` are not run (`NOT_RUN`, with the reason); a block all of whose commands an
earlier block runs is not run twice (`test_repeated_blocks_are_the_same_commands`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from .snippets import (
    Snippet,
    StandIns,
    free_names,
    prepare_python,
    run_command,
    shell_commands,
    snippets,
    substitute,
)

PYTHON = snippets("python")
BASH = snippets("bash")
DIGITS_TO_CIFAR10 = (('from_pretrained("digits"', 'from_pretrained("ema_cifar10"'),)


# -- what the snippets are given --------------------------------------------------------------

# Names a snippet uses without defining them, and what the test gives for each: what an earlier
# snippet of the page defined, or the reader's own data (`name = ...` in a snippet).
NAMES = {
    "model": "the page's model: Diffusion.from_pretrained of the snippet's model name",
    "np": "numpy, imported by the page's first snippet",
    "image": "a picture of the model's shape, float32 in [-1, 1]",
    "mask": "the model's (H, W), 1 on the top half (kept), 0 below",
    "a": "a picture, as `image`",
    "b": "another picture",
    "images": "2 pictures (1 on cifar10) as uint8 (n, H, W, C)",
    "images_uint8": "the same",
    "x": "2 noisy images of the model's shape, float32",
    "t": "int32 (2,) timesteps, 0 and T - 1",
    "new_params": "the model's params, copied (another params tree of its shape)",
}


def given(model, n_images: int) -> dict:
    """The values of `NAMES` for `model`."""
    import jax

    h, w, c = model.image_shape
    rng = np.random.default_rng(0)

    def picture():
        return rng.uniform(-1, 1, (h, w, c)).astype(np.float32)

    mask = np.zeros((h, w), np.float32)
    mask[: h // 2] = 1
    images = rng.integers(0, 256, (n_images, h, w, c), dtype=np.uint8)
    T = model.diffusion_config.num_diffusion_timesteps
    return {
        "model": model,
        "np": np,
        "image": picture(),
        "mask": mask,
        "a": picture(),
        "b": picture(),
        "images": images,
        "images_uint8": images,
        "x": rng.uniform(-1, 1, (2, h, w, c)).astype(np.float32),
        "t": np.array([0, T - 1], np.int32),
        "new_params": jax.tree.map(np.array, model.params),
    }


# -- what each Python snippet checks ----------------------------------------------------------


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def check_tour(ns, run):
    """README's and the Python API's tour: PNGs written, resume == one call, inpainting keeps."""
    x, model = ns["x0"], ns["model"]
    assert _pngs(run.cwd / "out")[0] == "000.png"
    assert all(np.isfinite(np.asarray(v)).all() for v in (ns["half"], x, ns["noisy"], ns["imgs"]))
    assert np.array_equal(np.asarray(x), np.asarray(model.denoise(4, key=1))), "resume != one call"
    filled, image, mask = np.asarray(ns["filled"]), run.given["image"], run.given["mask"]
    assert filled.shape == (4, *model.image_shape)
    np.testing.assert_allclose(filled[:, mask == 1], np.broadcast_to(image[mask == 1], filled[:, mask == 1].shape))
    assert ns["mixes"].shape == (len(ns["mixes"]), *model.image_shape) and len(ns["mixes"]) in (4, 8)
    assert ns["bits"].shape == (len(run.given["images_uint8"]),) and np.isfinite(ns["bits"]).all()


def check_readme(ns, run):
    check_tour(ns, run)
    assert len(_pngs(run.cwd / "out")) == len(ns["x"]) == (16 if run.kind == "docs" else 4)


def check_python_api(ns, run):
    check_tour(ns, run)
    assert len(_pngs(run.cwd / "out")) == 16
    assert np.array_equal(np.asarray(ns["x"]), np.asarray(ns["dpm"].denoise(8, key=2))), "not the same chain"


def check_streaming(ns, run):
    """One line per chunk: the step counts down by the chunk size to where the chain stops."""
    steps = [int(line.split()[0]) for line in run.stdout.splitlines()]
    model = ns["model"]
    T = model.num_timesteps
    assert steps[0] == T - model.chunk_size and steps == sorted(steps, reverse=True), steps
    assert np.diff(steps).tolist() == [-model.chunk_size] * (len(steps) - 1)


def check_python_api_more(ns, run):
    check_streaming(ns, run)
    assert ns["eps"].shape == run.given["x"].shape and np.isfinite(ns["eps"]).all()
    assert ns["ema_model"].unet_config == ns["model"].unet_config


def check_inpaint(ns, run):
    model, image, mask = ns["model"], run.given["image"], ns["mask"]
    x = np.asarray(ns["x"])
    assert x.shape == (4, *model.image_shape)
    np.testing.assert_allclose(x[:, mask == 1], np.broadcast_to(image[mask == 1], x[:, mask == 1].shape))
    assert isinstance(ns["step"].step, int)


def check_interpolate(ns, run):
    shape = (8, *ns["model"].image_shape)
    assert ns["mix"].shape == shape and ns["new"].shape == shape


def check_bound(ns, run):
    b, n = ns["b"], len(run.given["images"])
    T = ns["model"].diffusion_config.num_diffusion_timesteps
    assert b.total.shape == b.prior.shape == (n,) and b.terms.shape == b.mse.shape == (n, T)
    assert len(ns["rd"].rate) == T and np.isfinite(b.total).all()


def check_demo(ns, run):
    """The last call (`/diffuse`) gave a picture and a step of the chain, on the model chosen."""
    assert Path(ns["image"]).is_file() and 0 <= ns["step"] <= 1000, (ns["image"], ns["step"], ns["status"])
    assert ns["model"] == ("cifar10" if run.kind == "cifar10" else "digits"), ns["model"]


def check_models(ns, run):
    from ddpm_jax import UNET_PRESETS

    assert ns["model"].unet_config == UNET_PRESETS["cifar10"]


def check_samplers(ns, run):
    from ddpm_jax import Diffusion

    assert ns["samplers"].names() == ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde")
    assert np.array_equal(ns["imgs"], Diffusion.to_uint8(ns["x"], clip=True)), "imgs != x"


def check_register(ns, run):
    from ddpm_jax import samplers

    assert samplers.names()[-1] == "euler"  # unregistered after the test


def check_resume_multistep(ns, run):
    assert np.array_equal(np.asarray(ns["x0"]), np.asarray(ns["fast"].denoise(8, key=0))), "not bit for bit"


def check_training(ns, run):
    assert (run.cwd / "runs" / "mine" / "ema.safetensors").is_file()
    assert set(ns["metrics"]) == {"loss_sum", "grad_norm"}
    assert ns["grid"].shape[1:] == tuple(ns["ucfg"].resolution for _ in range(2)) + (ns["ucfg"].in_channels,)


def check_distillation(ns, run):
    assert (ns["model"].sampler.name, ns["model"].num_timesteps) == ("ddim_trailing", 4)
    assert ns["x"].shape == (16, 16, 16, 1) and ns["x8"].shape == (16, 16, 16, 1)
    assert (run.cwd / "runs" / "py-distil" / "round-1-4-steps" / "samples").is_dir()


@dataclass(frozen=True)
class Spec:
    """How to run one Python snippet.

    model: the model given as `model` when the snippet uses one it does not load;
    quick / fixes / cifar10: (old, new) substitutions (see the module docstring);
    cifar10=None: no cifar10 run (the snippet loads no model, or only stand-ins already);
    files: path (`~/` for the home folder) -> the stand-in put there (`StandIns.place`);
    quick_in_default: False moves the quick run to the slow suite.
    """

    check: object = None
    model: str = "digits"
    quick: tuple = ()
    fixes: tuple = ()
    cifar10: tuple | None = DIGITS_TO_CIFAR10
    files: dict = field(default_factory=dict)
    quick_in_default: bool = True


# The tour of the README and of the Python API: a 20-step chain instead of 1000, and the steps
# along it scaled down with it.
TOUR_QUICK = (
    ('Diffusion.from_pretrained("digits")', 'Diffusion.from_pretrained("digits", steps=20)'),
    ("n_steps=500", "n_steps=10"),
    ("curr_step=500", "curr_step=10"),
    ("n_steps=300", "n_steps=6"),
    ("t=500", "t=10"),
)
# README's, in the default suite: every batch of 4 as well (one compiled program for most calls).
README_QUICK = TOUR_QUICK + (
    ("model.denoise(16, key=0)", "model.denoise(4, key=0)"),
    ("dpm.denoise(8, key=2)", "dpm.denoise(4, key=2)"),
    ("np.linspace(0, 1, 8)", "np.linspace(0, 1, 4)"),
)
STREAM_QUICK = (("model.denoise_steps(4, key=0)", "model.denoise_steps(4, key=0, n_steps=20)"),)

# (file, a text in the snippet) -> how to run it; each snippet has one (`test_every_block_has_one_spec`).
SPECS = {
    ("README.md", "model.save(x"): Spec(check_readme, quick=README_QUICK),
    ("README.md", "for s in model.denoise_steps"): Spec(check_streaming, quick=STREAM_QUICK, cifar10=()),
    # The demo, served by the test on a free port of 127.0.0.1 (`served_demo`).
    ("docs/guide/demo.md", "from gradio_client import Client"): Spec(
        check_demo,
        model="",
        fixes=(('Client("http://127.0.0.1:7860/")', "Client(demo_url)"),),
        cifar10=(('"digits", False, 0, 4', '"cifar10", False, 0, 4'),),  # both Resets
        quick_in_default=False,  # tests/test_demo.py drives the same endpoints in the default suite
    ),
    ("docs/guide/editing.md", "model.inpaint("): Spec(
        check_inpaint,
        quick=(
            ('Diffusion.from_pretrained("digits")', 'Diffusion.from_pretrained("digits", steps=20)'),
            ("steps=250", "steps=20"),
        ),
    ),
    ("docs/guide/editing.md", "model.interpolate("): Spec(
        check_interpolate,
        quick=(("t=500", "t=10"), ("model.interpolate_noise(", "model.respaced(20).interpolate_noise(")),
        cifar10=(),
        quick_in_default=False,
    ),
    ("docs/guide/distillation.md", "distill("): Spec(
        check_distillation,
        model="",
        quick=(("RunOptions(steps=200, sample_every=200)", "RunOptions(steps=2, sample_every=2)"),),
        cifar10=None,  # the digits data
        quick_in_default=False,  # tests/test_distill.py runs the same in the default suite
    ),
    ("docs/guide/evaluation.md", "rate_distortion(b)"): Spec(check_bound),
    ("docs/guide/models.md", 'from_pretrained("ema_cifar10")'): Spec(
        check_models,
        model="",
        cifar10=None,
        files={
            "~/models/model-790000.ckpt": "port",
            "~/models/ddpm-cifar10-32": "diffusers",
            "cifar10.safetensors": "params",
        },
    ),
    # README's tour and three lines more: its quick run is slow, README's is not.
    ("docs/guide/python-api.md", "model.save(x"): Spec(check_python_api, quick=TOUR_QUICK, quick_in_default=False),
    ("docs/guide/python-api.md", "for s in model.denoise_steps"): Spec(
        check_python_api_more, quick=STREAM_QUICK, cifar10=()
    ),
    ("docs/guide/samplers.md", "samplers.names()"): Spec(check_samplers, cifar10=(), quick_in_default=False),
    ("docs/guide/samplers.md", "def euler_step"): Spec(check_register, model="", cifar10=None),
    ("docs/guide/samplers.md", "pred_x0=first.pred_x0"): Spec(check_resume_multistep, cifar10=()),
    ("docs/guide/training.md", "open_run("): Spec(
        check_training,
        model="",
        quick_in_default=False,  # compiles a training step and a sampler: 40 s; test_trainer.py tests the loop
        quick=(
            ("RunOptions(steps=2000)", "RunOptions(steps=3)"),
            ("train(100)", "train(3)"),
            ("preview(16)", "preview(2)"),
        ),
        # The cifar10 presets, and a batch of 4 instead of the preset's 128 (a CPU step of 128 takes minutes).
        cifar10=(
            ('UNET_PRESETS["digits"]', 'UNET_PRESETS["cifar10"]'),
            ('DIFFUSION_PRESETS["digits"]', 'DIFFUSION_PRESETS["cifar10"]'),
            ('TRAIN_PRESETS["digits"]', 'with_overrides(TRAIN_PRESETS["cifar10"], batch_size=4)'),
            ("import RunOptions, Trainer, open_run", "import RunOptions, Trainer, open_run, with_overrides"),
        ),
    ),
}


# -- running a Python snippet -----------------------------------------------------------------


def spec_for(snippet: Snippet, specs: dict):
    """The one spec whose file is the snippet's and whose text is in it."""
    found = [spec for (path, text), spec in specs.items() if path == snippet.path and text in snippet.code]
    assert len(found) == 1, f"{snippet.id}: {len(found)} specs match; give each snippet one (SPECS, BASH_SPECS)"
    return found[0]


@dataclass
class Run:
    """One run of a snippet: its kind, working directory, the names given, what it printed."""

    kind: str
    cwd: Path
    given: dict = field(default_factory=dict)
    stdout: str = ""


def snippet_code(snippet: Snippet, spec, kind: str) -> str:
    """The snippet with the run's substitutions: fixes always, then the quick ones, then the redirect."""
    code = substitute(snippet.code, spec.fixes)
    if kind in ("quick", "cifar10"):
        code = substitute(code, spec.quick)
    if kind == "cifar10":
        code = substitute(code, spec.cifar10)
    return code


def python_runs():
    """A pytest param (kind, snippet) for every run, the slow ones marked."""
    slow = pytest.mark.slow
    for snippet in PYTHON:
        specs = [v for (path, text), v in SPECS.items() if path == snippet.path and text in snippet.code]
        if len(specs) != 1:
            continue  # none or several: test_every_block_has_one_spec_or_is_not_run says so
        spec = specs[0]
        yield pytest.param("quick", snippet, id=f"quick-{snippet.id}", marks=() if spec.quick_in_default else slow)
        if spec.quick:
            yield pytest.param("docs", snippet, id=f"docs-{snippet.id}", marks=slow)
        if spec.cifar10 is not None:
            yield pytest.param("cifar10", snippet, id=f"cifar10-{snippet.id}", marks=slow)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return StandIns(tmp_path_factory.mktemp("stand_ins"))


@pytest.fixture
def user(tmp_path, monkeypatch, stand_ins):
    """A user's fresh working directory and home (the current ones here), the stand-ins where
    the real models would be, downloads off."""
    import huggingface_hub.constants

    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    for k, v in stand_ins.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(stand_ins.hub))
    return cwd, home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_demo():
    """The page as `ddpm-jax demo` builds it (every model choice), on a free port of 127.0.0.1."""
    from ddpm_jax.demo.app import build_app, launch
    from ddpm_jax.demo.models import Models

    app = build_app(Models(chunk_size=10), "digits")
    _, url, _ = launch(app, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    return app, url


@pytest.mark.parametrize(("kind", "snippet"), list(python_runs()))
def test_python_snippet(kind, snippet, user, stand_ins):
    import contextlib
    import io

    from ddpm_jax import Diffusion, samplers

    spec = spec_for(snippet, SPECS)
    cwd, home = user
    for path, what in spec.files.items():
        stand_ins.place(what, home / path[2:] if path.startswith("~/") else cwd / path)
    run = Run(kind, cwd)
    names = free_names(snippet.code)
    assert names <= NAMES.keys(), f"{snippet.id} uses {sorted(names - NAMES.keys())}: say in NAMES what it is given"
    if names - {"np"}:
        name = "ema_cifar10" if kind == "cifar10" else spec.model
        run.given = given(Diffusion.from_pretrained(name), 1 if kind == "cifar10" else 2)
    namespace = {"__name__": "__snippet__", "__given__": run.given, **{k: run.given[k] for k in names - {"np"}}}
    namespace["np"] = np
    app = None
    if "gradio_client" in snippet.code:
        app, namespace["demo_url"] = served_demo()
    registered = samplers.names()
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(prepare_python(snippet, snippet_code(snippet, spec, kind)), namespace)
        run.stdout = out.getvalue()
        if spec.check is not None:
            spec.check(namespace, run)
    finally:
        for name in set(samplers.names()) - set(registered):
            samplers.unregister(name)
        if app is not None:
            app.close()


# -- the bash blocks --------------------------------------------------------------------------

# What is not run, by how the command starts, and why.
NOT_RUN = {
    "make": "sets up .venv/ (pip) and runs a suite; `make demo` is `ddpm-jax demo`, run where a block says so",
    "pip": "installs packages",
    ".venv/bin/python -m pytest": "the test suite itself",
    "python bench/": "a benchmark (minutes to hours); tests/test_bench.py runs every script in its quickest mode",
    "cp": "copies into the package (ddpm_jax/models/); the block's `expect` checks the file it copies",
}


def not_run(argv: list[str]) -> str | None:
    line = " ".join(argv)
    return next((why for start, why in NOT_RUN.items() if line == start or line.startswith(start + " ")), None) or (
        next((why for start, why in NOT_RUN.items() if start.endswith("/") and line.startswith(start)), None)
    )


def is_ddpm_jax(argv: list[str]) -> bool:
    return argv[0] in ("ddpm-jax", ".venv/bin/ddpm-jax")


@dataclass(frozen=True)
class BashSpec:
    """How to run one bash block.

    fixes: (old, new) that every run needs (a placeholder, a GPU, sizes a CPU cannot sample:
    50,000 cifar10 samples, 800,000 training steps); quick: fewer steps or samples for the
    cifar10 run; cifar10: the redirect of its digits commands to the cifar10 architecture (None:
    no cifar10 run, the block runs on the cifar10 stand-ins already); files: input files the
    reader is expected to have (`supplies`); expect: globs (under the working directory) each
    run must leave matched. `FREE_PORT` in a substitution becomes a free port of 127.0.0.1.
    """

    expect: tuple = ()
    fixes: tuple = ()
    quick: tuple = ()
    cifar10: tuple | None = (("--model digits", "--model ema_cifar10"),)
    files: tuple = ()


INCEPTION = "pt_inception-2015-12-05-6726825d.pth"
EVAL_QUICK = (("--n 8 --batch 8", "--n 1 --batch 1"),)  # a 1000-step bound per image: 1 cifar10 image
TRAIN_CIFAR10 = (("--config digits", "--config cifar10 --batch 4"),)  # the preset's batch 128: minutes a step

# (file, a text in the block) -> how to run it. Blocks with nothing to run (NOT_RUN) have none.
BASH_SPECS = {
    ("docs/guide/command-line.md", "ddpm-jax sample --model digits --n 16"): BashSpec(
        expect=("out/grid.png", "out/00000.png", "out/ddim50/grid.png", "out/dpm10/grid.png", "out/bf16/grid.png")
        + ("fid/samples_*.npz",),
        fixes=(
            ("--precision mixed_bf16 --out out/bf16", "--precision mixed_bf16 --n 2 --steps 5 --out out/bf16"),
            ("--n 50000 --batch 256", "--n 4 --batch 2 --steps 5"),
        ),
        quick=(
            ("--n 16 --seed 0", "--n 2 --steps 5 --seed 0"),
            ("--steps 50 --sampler ddim", "--steps 5 --sampler ddim --n 2"),
            ("--steps 10 --sampler dpmpp_2m", "--steps 10 --sampler dpmpp_2m --n 2"),
        ),
    ),
    ("docs/guide/command-line.md", "ddpm-jax train --data digits"): BashSpec(
        expect=("runs/digits/ema.safetensors", "runs/mine/ema.safetensors", "runs/digits-v/ema.safetensors"),
        fixes=(
            ("--steps 12000 --out runs/digits --resume", "--steps 6 --out runs/digits --resume"),
            ("--steps 12000", "--steps 3"),
            ("--steps 800000 --batch 128", "--steps 2 --batch 4"),
            ("--steps 10000 --lr 3e-4 --decay-steps 10000", "--steps 2 --batch 4 --lr 3e-4 --decay-steps 2"),
        ),
        cifar10=TRAIN_CIFAR10 + (("--init digits", "--init ema_cifar10"),),
        files=("path/to/images",),
    ),
    ("docs/guide/command-line.md", "ddpm-jax demo --model"): BashSpec(
        fixes=(("make demo", ".venv/bin/ddpm-jax demo"), ("--host 0.0.0.0", "--host 127.0.0.1")),
        cifar10=None,
        files=("my.safetensors",),
    ),
    ("docs/guide/command-line.md", "ddpm-jax inpaint"): BashSpec(
        expect=("out/grid.png", "out/000.png", "out/cat/grid.png"),
        quick=(("--n 8", "--n 1 --steps 20"),),
        files=("digit.png", "cat.png", "mask.png"),
    ),
    ("docs/guide/command-line.md", "ddpm-jax interpolate"): BashSpec(
        expect=("strip.png", "new.png"),
        quick=(("--t 500", "--t 10"), ("--k 8 --out new.png", "--k 2 --out new.png")),
        files=("a.png", "b.png"),
    ),
    ("docs/guide/command-line.md", "ddpm-jax convert SRC DST"): BashSpec(
        expect=("params.safetensors", "cifar10.safetensors", "model.ckpt"),
        fixes=(
            ("convert SRC DST --config cifar10|lsun", "convert model-790000.ckpt cifar10.safetensors --config cifar10"),
            ("convert SRC DST ", "convert model-790000.ckpt params.safetensors "),
            ("--to-torch SRC DST.ckpt", "--to-torch params.safetensors model.ckpt"),
        ),
        cifar10=None,
        files=("model-790000.ckpt",),
    ),
    ("docs/guide/command-line.md", "ddpm-jax eval bpd"): BashSpec(
        expect=("eval/heldout/bound.npz", "eval/heldout/bpd.json", "eval/heldout/rd.json", "eval/train/bound.npz")
        + ("fid_out/fid.json", "ref_stats.npz"),
        fixes=(
            ("--data digits --batch 64 --out eval/heldout", "--data digits --n 8 --batch 8 --out eval/heldout"),
            ("--n 450 --batch 64", "--n 8 --batch 8"),
            (
                "--samples DIR_OR_NPZ --ref DIR_OR_NPZ_OR_STATS --inception-weights PATH",
                "--samples fid/ --ref ref.npz --inception-weights inception.pth",
            ),
            (
                "[--batch 50] [--device cpu|cuda] [--kid-subset-size 1000] [--is-splits 10] [--seed 0]",
                "--batch 50 --device cpu --kid-subset-size 1000 --is-splits 10 --seed 0",
            ),
            ("[--save-ref-stats ref_stats.npz] [--out DIR]", "--save-ref-stats ref_stats.npz --out fid_out"),
        ),
        quick=EVAL_QUICK,
        files=("fid", "ref.npz", "inception.pth"),
    ),
    ("docs/guide/devices.md", "ddpm-jax sample --model ema_cifar10"): BashSpec(
        expect=("shared/fid/samples_*.npz",),
        fixes=(
            ("--n 50000 --batch 512", "--n 2 --batch 2 --steps 5"),
            ("/shared/fid", "shared/fid"),
            ("HOST0:12345", "127.0.0.1:FREE_PORT"),
            ("--num-processes N --process-id i", "--num-processes 1 --process-id 0"),
        ),
        cifar10=None,
    ),
    ("docs/guide/distillation.md", "--out runs/distil "): BashSpec(
        expect=("runs/distil/distilled.safetensors", "runs/distil/round-1-4-steps/samples/*.png", "out/four/grid.png"),
        fixes=(("--steps-per-round 2500 --batch 64 --lr 3e-4", "--from-steps 8 --steps-per-round 2 --batch 4"),),
        cifar10=None,
    ),
    ("docs/guide/distillation.md", "--out runs/digits-v"): BashSpec(
        expect=("runs/distil-v/round-7-4-steps/ema.safetensors", "runs/distil-v/round-9-1-steps/ema.safetensors"),
        fixes=(
            ("--steps 10000 --lr 3e-4 --decay-steps 10000", "--steps 2 --batch 4 --lr 3e-4 --decay-steps 2"),
            ("--steps-per-round 4000 --batch 64", "--steps-per-round 2 --batch 4"),
        ),
        cifar10=None,
    ),
    ("docs/guide/distillation.md", "--model ema_cifar10"): BashSpec(
        expect=("runs/cifar10-distil/distilled.safetensors",),
        fixes=(
            (
                "--from-steps 512 --to-steps 1 --steps-per-round 50000 --batch 128",
                "--from-steps 2 --to-steps 1 --steps-per-round 1 --batch 2",
            ),
        ),
        cifar10=None,
        files=("path/to/images",),
    ),
    ("docs/guide/evaluation.md", "ddpm-jax eval bpd --model digits --data digits --out"): BashSpec(
        expect=("eval/heldout/bound.npz", "eval/heldout/rd.json"),
        fixes=(("--data digits --out eval/heldout", "--data digits --n 8 --batch 8 --out eval/heldout"),),
        quick=EVAL_QUICK,
        files=("fid", "cifar10_train.npz", INCEPTION),
    ),
    ("docs/guide/evaluation.md", "--coordinator HOST0:12345"): BashSpec(
        expect=("fid/samples_*.npz", "cifar10_train.npz", "cifar10_train_stats.npz", "fid/fid.json"),
        fixes=(
            ("--n 50000 --batch 512", "--n 20 --batch 20 --steps 2"),
            ("HOST0:12345", "127.0.0.1:FREE_PORT"),
            ("--num-processes N --process-id i", "--num-processes 1 --process-id 0"),
            ("--device cuda", "--device cpu"),
            ("--inception-weights ...", f"--inception-weights ~/models/{INCEPTION}"),
        ),
        cifar10=None,
        files=("cifar-10-batches-bin", f"~/models/{INCEPTION}"),
    ),
    ("docs/guide/models.md", "ddpm-jax convert model-790000.ckpt"): BashSpec(
        expect=("ema_cifar10.safetensors", "church.safetensors", "cifar10.safetensors", "model-790000.ckpt"),
        cifar10=None,
        files=("model-790000.ckpt", "ddpm-ema-church-256"),
    ),
    ("docs/guide/training.md", "--ckpt-every 250"): BashSpec(
        expect=("runs/digits/ema.safetensors",),
        fixes=(("--steps 12000", "--steps 3"),),
        cifar10=TRAIN_CIFAR10,
    ),
}


def block_commands(snippet: Snippet) -> list[list[str]]:
    return shell_commands(snippet.code, Path("~"))


def covered_by(snippet: Snippet) -> list[str]:
    """The earlier blocks that run every command of this one (then this one is not run again)."""
    mine = [" ".join(c) for c in block_commands(snippet) if not not_run(c)]
    earlier = {s.id: [" ".join(c) for c in block_commands(s)] for s in BASH[: BASH.index(snippet)]}
    where = {c: next((sid for sid, theirs in earlier.items() if c in theirs), None) for c in mine}
    return sorted(set(where.values())) if mine and None not in where.values() else []


def runs_nothing(snippet: Snippet) -> bool:
    return all(not_run(c) for c in block_commands(snippet)) or bool(covered_by(snippet))


def bash_runs():
    slow = pytest.mark.slow
    for snippet in BASH:
        specs = [v for (path, text), v in BASH_SPECS.items() if path == snippet.path and text in snippet.code]
        if runs_nothing(snippet) or len(specs) != 1:
            continue  # none or several: test_every_block_has_one_spec_or_is_not_run says so
        spec = specs[0]
        yield pytest.param("docs", snippet, id=f"docs-{snippet.id}", marks=slow)
        if spec.cifar10 is not None:
            yield pytest.param("cifar10", snippet, id=f"cifar10-{snippet.id}", marks=slow)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Random weights for the FID Inception network, in the standard file's keys (made once)."""
    import torch

    from .helpers import random_inception_state

    path = tmp_path_factory.mktemp("inception") / INCEPTION
    torch.save(random_inception_state(), path)
    return path


def supply(name: str, dest: Path, kind: str, stand_ins: StandIns, request):
    """Make the input file or folder `name` at `dest`: what the reader is expected to have."""
    from PIL import Image

    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if name in ("digit.png", "cat.png", "a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(dest)
    elif name == "mask.png":
        pixels = np.zeros((32, 32), np.uint8)
        pixels[:16] = 255
        Image.fromarray(pixels).save(dest)
    elif name in ("path/to/images", "fid"):
        dest.mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(dest / f"{i:05}.png")
    elif name in ("ref.npz", "cifar10_train.npz"):
        np.savez(dest, images=rng.integers(0, 256, (20, 32, 32, 3), np.uint8))
    elif name.endswith((INCEPTION, "inception.pth")):
        os.link(request.getfixturevalue("inception_weights"), dest)
    elif name == "cifar-10-batches-bin":
        dest.mkdir()
        for i in range(1, 6):
            rng.integers(0, 256, (4, 3073), np.uint8).tofile(dest / f"data_batch_{i}.bin")
    elif name == "model-790000.ckpt":
        stand_ins.place("port", dest)
    elif name == "ddpm-ema-church-256":
        stand_ins.place("diffusers", dest)
    elif name == "my.safetensors":  # a model of the reader's: the cifar10 stand-in
        stand_ins.place("params", dest)
    else:
        raise AssertionError(f"no maker for the input {name!r}")


def demo_answers(argv: list[str], cwd: Path, env: dict):
    """Start a `ddpm-jax demo` command on a free port of 127.0.0.1 (its --port replaced), wait for
    the page, reset its first model through gradio_client (x_T at step T), stop it."""
    from ddpm_jax.demo.measure import connect

    port = str(free_port())
    argv = argv[:]
    if "--port" in argv:
        argv[argv.index("--port") + 1] = port
    else:
        argv += ["--port", port]
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    assert host == "127.0.0.1", "a test serves loopback only"
    model = argv[argv.index("--model") + 1] if "--model" in argv else "digits"
    cmd = [sys.executable, "-m", "ddpm_jax.cli", *argv[1:]]
    log_path = cwd / f"demo-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Connect once Gradio's own start-up check of the page has passed (it prints this line):
        # a client polling before then can make that check time out, and the server exit.
        deadline = time.monotonic() + 600
        while "To create a public link" not in log_path.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        client = connect(f"http://127.0.0.1:{port}/", proc, timeout=600)
        _, step, status, *_ = client.predict(model, False, 0, 1, api_name="/reset")
        # x_T of the model's chain (the page may pick a shorter chain than T for a large model)
        assert step > 0 and status.startswith(model), (step, status, log_path.read_text()[-3000:])
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize(("kind", "snippet"), list(bash_runs()))
def test_bash_block(kind, snippet, user, stand_ins, request):
    spec = spec_for(snippet, BASH_SPECS)
    cwd, home = user
    for name in spec.files:
        supply(name, home / name[2:] if name.startswith("~/") else cwd / name, kind, stand_ins, request)
    code = snippet_code(snippet, spec, kind).replace("FREE_PORT", str(free_port()))
    env = {**os.environ, **stand_ins.env(), "HOME": str(home)}
    for argv in shell_commands(code, home):
        if not_run(argv):
            continue
        if is_ddpm_jax(argv) and argv[1] == "demo":
            demo_answers(argv, cwd, env)
            continue
        proc = run_command(argv, cwd, env, timeout=1800)
        assert proc.returncode == 0, f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
    for pattern in spec.expect:
        assert list(cwd.glob(pattern)), f"{snippet.id}: nothing matches {pattern} in {sorted(cwd.rglob('*'))}"


# -- every block is accounted for (default suite, no JAX) --------------------------------------


@pytest.mark.parametrize("snippet", PYTHON + BASH, ids=lambda s: s.id)
def test_every_block_has_one_spec_or_is_not_run(snippet):
    """A new snippet in the docs fails here until the test knows how to run it."""
    if snippet.lang == "python":
        spec_for(snippet, SPECS)
        return
    commands = block_commands(snippet)
    for argv in commands:
        assert not_run(argv) or is_ddpm_jax(argv) or argv[:2] == ["python", "-c"], (
            f"{snippet.id}: {' '.join(argv)} is neither run nor in NOT_RUN"
        )
    if not runs_nothing(snippet):
        spec_for(snippet, BASH_SPECS)


def test_repeated_blocks_are_the_same_commands():
    """The blocks not run again: every command of each is in the earlier block named here."""
    repeated = {s.id.split(":")[0]: [i.split(":")[0] for i in covered_by(s)] for s in BASH if covered_by(s)}
    assert repeated == {
        "docs/guide/demo.md": ["docs/guide/command-line.md"],
        "docs/guide/editing.md": ["docs/guide/command-line.md"] * 2,
        "docs/guide/evaluation.md": ["docs/guide/command-line.md"],
        "docs/guide/training.md": ["docs/guide/command-line.md"],
    }, repeated


def test_documented_commands_parse():
    """Every `ddpm-jax` command of the docs (placeholders filled by the fixes) parses: a renamed
    or removed flag fails here, in the default suite, before any slow run."""
    from ddpm_jax.cli import build_parser

    for snippet in BASH:
        code = snippet.code
        if not runs_nothing(snippet):
            code = substitute(code, spec_for(snippet, BASH_SPECS).fixes)
        for argv in shell_commands(code.replace("FREE_PORT", "1"), Path("~")):
            if is_ddpm_jax(argv):
                try:
                    build_parser(argv[1:]).parse_args(argv[1:])
                except SystemExit as err:
                    raise AssertionError(f"{snippet.id}: {' '.join(argv)} does not parse") from err
