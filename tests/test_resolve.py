"""One resolver for loading and converting, and imports that point one way:
the core never imports the converters or the page."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ddpm_jax
from ddpm_jax import Diffusion
from ddpm_jax.cli import main
from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS
from ddpm_jax.convert import resolve as resolve_mod
from ddpm_jax.convert.port import flax_to_port
from ddpm_jax.convert.resolve import Source, load_pretrained, resolve
from ddpm_jax.weights import flatten_params, load_weights, save_weights

from .helpers import CONVERT_UNET, TINY_DIFFUSION, random_params, script_env

CORE = Path(ddpm_jax.__file__).parent
FAR_SIDE = ("ddpm_jax.convert", "ddpm_jax.demo")


def _imports(tree: ast.AST, package: str):
    """(module imported, enclosing function name or None) for every import in a module's AST."""
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                found.extend((a.name, func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative to `package`, one package up for each dot after the first
                    parent = package.rsplit(".", child.level - 1)[0]
                    base = f"{parent}.{base}" if base else parent
                found.extend([(base, func)] + [(f"{base}.{a.name}", func) for a in child.names])
            visit(child, inner)

    visit(tree, None)
    return found


def test_the_core_never_imports_the_converters_or_the_page():
    """Every module of the ddpm_jax package itself and of its command line (ddpm_jax/cli/),
    function-level imports included; the one door is Diffusion.from_pretrained, and a command
    may import, inside a function, what it dispatches to."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        package = ".".join(("ddpm_jax", *path.parent.relative_to(CORE).parts))
        for module, func in _imports(ast.parse(path.read_text()), package):
            door = path.name == "pipeline.py" and func == "from_pretrained"
            dispatch = package == "ddpm_jax.cli" and func is not None
            if module.startswith(FAR_SIDE) and not (door or dispatch):
                offenders.append(f"{path.relative_to(CORE)}: {module} (in {func or 'module scope'})")
    assert offenders == []


def test_the_import_checker_sees_a_late_import():
    """The check above would catch what the old pretrained.py did."""
    tree = ast.parse("def f():\n    from .convert.port import port_to_flax\n")
    assert ("ddpm_jax.convert.port", "f") in _imports(tree, "ddpm_jax")
    tree = ast.parse("from ..demo import app\n")  # in ddpm_jax/cli/
    assert ("ddpm_jax.demo.app", None) in _imports(tree, "ddpm_jax.cli")


def test_sampling_loads_nothing_from_the_far_side(tmp_path):
    """In a fresh process: build, sample and save a model; no converter or page module is loaded."""
    code = f"""
import sys, jax
from ddpm_jax import Diffusion, DiffusionConfig, UNetConfig
from ddpm_jax.unet import init_params
cfg = UNetConfig(resolution=8, in_channels=1, out_ch=1, ch=32, ch_mult=(1,), num_res_blocks=1,
                 attn_resolutions=(), dropout=0.0)
m = Diffusion(diffusion_config=DiffusionConfig(num_diffusion_timesteps=4), unet_config=cfg,
              params=init_params(cfg, jax.random.key(0)))
m.save(m.denoise(2, key=0), r"{tmp_path}/{{:02}}.png")
m.save_pretrained(r"{tmp_path}/m.safetensors")
print(sorted(k for k in sys.modules if k.startswith({FAR_SIDE!r})))
"""
    # With the run's compilation cache: the UNet's init (ONE_LEVEL_UNET's, in tests/helpers.py) is
    # most likely compiled already.
    out = subprocess.run([sys.executable, "-c", code], env=script_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def tiny_preset(monkeypatch, tmp_path):
    """CONVERT_UNET registered as a preset (so a port checkpoint's shapes pick it), a private cache."""
    monkeypatch.setitem(UNET_PRESETS, "tiny", CONVERT_UNET)
    monkeypatch.setitem(DIFFUSION_PRESETS, "tiny", TINY_DIFFUSION)
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    return random_params(CONVERT_UNET, seed=21)


def same(a, b) -> bool:
    a, b = flatten_params(a), flatten_params(b)
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def test_a_port_checkpoint_saved_as_safetensors_loads_and_converts_alike(tiny_preset, tmp_path):
    path = tmp_path / "port.safetensors"
    save_file(flax_to_port(tiny_preset, CONVERT_UNET), str(path))
    assert resolve(path).kind == "port"
    assert same(Diffusion.from_pretrained(path).params, tiny_preset)  # load_pretrained refused this before
    assert main(["convert", str(path), str(tmp_path / "ours.safetensors")]) == 0
    dcfg, ucfg, params = load_weights(tmp_path / "ours.safetensors")
    assert (dcfg, ucfg) == (TINY_DIFFUSION, CONVERT_UNET) and same(params, tiny_preset)
    assert resolve(tmp_path / "ours.safetensors") == Source(
        "params", str(tmp_path / "ours.safetensors"), tmp_path / "ours.safetensors"
    )


def test_a_diffusers_weights_file_alone_says_to_pass_its_folder(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"time_embedding.linear_1.weight": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(ValueError, match="diffusers' UNet2DModel weights: pass the folder"):
        load_pretrained(path)


def test_a_hub_id_is_resolved_once_per_load(tmp_path, monkeypatch):
    """The Hub folder is looked up once; the cache key and the conversion reuse it."""
    from .helpers import random_diffusers_unet, save_diffusers_folder

    folder = save_diffusers_folder(
        random_diffusers_unet(CONVERT_UNET, seed=3), tmp_path / "snap", num_train_timesteps=20
    )
    calls = []
    monkeypatch.setattr(resolve_mod, "hub_folder", lambda repo: calls.append(repo) or folder)
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    model = Diffusion.from_pretrained("someone/ddpm-tiny")
    assert calls == ["someone/ddpm-tiny"] and model.num_timesteps == 20
    assert len(list((tmp_path / "cache" / "converted").glob("hub-someone--ddpm-tiny-*.safetensors"))) == 1


def test_an_unwritable_cache_converts_in_memory_with_a_warning(tiny_preset, tmp_path, monkeypatch, caplog):
    path = tmp_path / "port.safetensors"
    save_file(flax_to_port(tiny_preset, CONVERT_UNET), str(path))
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DDPM_JAX_CACHE", str(blocker))
    with caplog.at_level("WARNING"):
        assert same(Diffusion.from_pretrained(path).params, tiny_preset)
    assert "converting in memory" in caplog.text
    assert blocker.read_text() == "a file where the cache folder should be"


@pytest.mark.parametrize("to_torch", [False, True], ids=["to-ddpm_jax", "to-torch"])
def test_convert_refuses_to_write_over_its_source(tiny_preset, tmp_path, capsys, to_torch):
    """The same path, another spelling of it, or a symlink to it: refused, the source byte-identical."""
    if to_torch:
        src = tmp_path / "ours.safetensors"
        save_weights(src, tiny_preset, diffusion_config=TINY_DIFFUSION, unet_config=CONVERT_UNET)
    else:
        src = tmp_path / "model.safetensors"
        save_file(flax_to_port(tiny_preset, CONVERT_UNET), str(src))
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.safetensors").symlink_to(src)
    flags = ["--to-torch"] if to_torch else []
    for dst in (src, tmp_path / "sub" / ".." / src.name, tmp_path / "link.safetensors"):
        assert main(["convert", *flags, str(src), str(dst)]) == 2
        assert "is the source checkpoint itself" in capsys.readouterr().err
        assert src.read_bytes() == before
    assert main(["convert", *flags, str(src), str(tmp_path / "sub")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", src.name, "sub"]
