"""The code of the README and docs/, as tests/test_snippets.py runs it.

`snippets(lang)` reads every fenced block of README.md and docs/**/*.md;
`shell_commands` splits a bash block into commands as a shell would (lines
joined at a trailing backslash, comments dropped, `~` expanded);
`prepare_python` turns a Python block into code to `exec`, with a line
`name = ...` (the docs' "your data here") reading `name` from the names the
test gives.

A snippet that names a released model loads a stand-in: random weights of
the cifar10 architecture (`random_weights`, the scale of Flax's default
initialisers, made without running Flax's init) where the cache, a file or
a folder would hold the real ones (`StandIns`). Nothing is fetched.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shlex
import subprocess
import symtable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: its file (relative to the repo), the line of its first code line, its code."""

    path: str
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def snippets(lang: str) -> list[Snippet]:
    """Every ```lang block of the README and docs/, in file order (indented blocks dedented)."""
    found = []
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            indent, block_lang, start = m.group(1), m.group(2), i + 1
            i = start
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            if block_lang == lang:
                code = "\n".join(line[len(indent) :] for line in lines[start:i])
                found.append(Snippet(str(path.relative_to(ROOT)), start + 1, lang, code + "\n"))
            i += 1
    return found


def substitute(code: str, pairs) -> str:
    """`code` with each (old, new) of `pairs` replaced; an `old` that is not in the code is an
    error (the doc changed: the test's substitution must change with it)."""
    for old, new in pairs:
        if old not in code:
            raise AssertionError(f"the substitution {old!r} -> {new!r} no longer matches the snippet:\n{code}")
        code = code.replace(old, new)
    return code


def placeholders(code: str) -> set[str]:
    """Names the snippet sets to `...` at its top level: the reader's data, given by the test."""
    return {
        node.targets[0].id
        for node in ast.parse(code).body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and node.value.value is Ellipsis
    }


def free_names(code: str) -> set[str]:
    """The names the snippet uses without defining them (nor importing, nor builtins), and its
    placeholders: what the page defined before it, or the reader's own data."""
    table = symtable.symtable(code, "<snippet>", "exec")
    names = set()

    def walk(t):
        for sym in t.get_symbols():
            if sym.is_referenced() and not (sym.is_assigned() or sym.is_imported() or sym.is_parameter()):
                if t.get_type() == "module" or sym.is_global():
                    names.add(sym.get_name())
        for child in t.get_children():
            walk(child)

    walk(table)
    defined_at_top = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    return {n for n in names - defined_at_top if not hasattr(builtins, n)} | placeholders(code)


class _Placeholders(ast.NodeTransformer):
    """`name = ...` at the top level -> `name = __given__["name"]`."""

    def __init__(self, names):
        self.names = names

    def visit_Module(self, node):
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
                if name in self.names:
                    given = ast.Subscript(ast.Name("__given__", ast.Load()), ast.Constant(name), ast.Load())
                    stmt.value = ast.copy_location(given, stmt.value)
        return ast.fix_missing_locations(node)


def prepare_python(snippet: Snippet, code: str | None = None):
    """The snippet (or `code`, the snippet after substitutions) compiled for `exec`, its line
    numbers those of the Markdown file, so that a traceback points into the page."""
    code = snippet.code if code is None else code
    tree = _Placeholders(placeholders(code)).visit(ast.parse(code))
    ast.increment_lineno(tree, snippet.line - 1)
    return compile(tree, str(ROOT / snippet.path), "exec")


def shell_commands(code: str, home: Path) -> list[list[str]]:
    """The commands of a bash block as argument lists: backslash-continued lines joined,
    comments and blank lines dropped, a leading `~/` expanded to `home` as a shell would."""
    commands, pending = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        if argv:
            commands.append([f"{home}/{a[2:]}" if a.startswith("~/") else a for a in argv])
    return commands


def random_weights(config, seed: int = 0) -> dict:
    """Random params of `config` at the scale of Flax's default initialisers (kernels
    N(0, 1/fan_in), biases 0, GroupNorm scales 1), made in numpy: no Flax init to compile,
    which at the cifar10 size takes longer than the rest of a load."""
    from ddpm_jax.weights import expected_shapes, unflatten_params

    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in expected_shapes(config).items():
        kind = name.rsplit("/", 1)[-1]
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            flat[name] = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
        else:
            flat[name] = (np.ones if kind == "scale" else np.zeros)(shape, np.float32)
    return unflatten_params(flat)


def save_diffusers(folder: Path, params: dict, config, diffusion_config):
    """`params` as a diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors,
    scheduler_config.json), written through the converter's own key table, without torch."""
    import json

    from safetensors.numpy import save_file

    from ddpm_jax.convert.diffusers_format import DIFFUSERS_TABLE, unet_config_to_diffusers
    from ddpm_jax.convert.mapping import from_flax, key_table
    from ddpm_jax.weights import flatten_params

    folder.mkdir(parents=True)
    state = from_flax(flatten_params(params), key_table(DIFFUSERS_TABLE, config))
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **unet_config_to_diffusers(config)}))
    variance = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}[diffusion_config.model_var_type]
    scheduler = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": diffusion_config.num_diffusion_timesteps,
        "beta_schedule": diffusion_config.beta_schedule,
        "beta_start": diffusion_config.beta_start,
        "beta_end": diffusion_config.beta_end,
        "variance_type": variance,
    }
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler))


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandIns:
    """What a user would have fetched or downloaded, made under `root` with random weights of
    the cifar10 architecture (35.7M params), each file written once and linked where it is needed:

    - `cache/`: the ddpm_jax cache (`DDPM_JAX_CACHE`) with the converted params of every released
      name a snippet uses, where `from_pretrained` finds them before it would fetch anything;
    - `hub/`: huggingface_hub's cache (`HF_HUB_CACHE`) holding the Hub ids the snippets name as
      diffusers folders of the cifar10 architecture (the 256x256 ones too: an lsun-size UNet takes
      minutes a step on a CPU);
    - `params.safetensors`, `port.ckpt`, `diffusers/`: ddpm_jax params, a port checkpoint and a
      diffusers folder, for the files a snippet expects the reader to have.
    """

    RELEASED = ("cifar10", "ema_cifar10")
    HUB_IDS = ("google/ddpm-cifar10-32", "google/ddpm-ema-church-256")  # the ones the docs load

    def __init__(self, root: Path):
        from ddpm_jax import DIFFUSION_PRESETS, UNET_PRESETS
        from ddpm_jax.convert.port import flax_to_port
        from ddpm_jax.convert.registry import REGISTRY
        from ddpm_jax.weights import save_weights

        self.root = root
        self.cache, self.hub = root / "cache", root / "hub"
        self.params_file, self.port_file, self.diffusers = (
            root / "params.safetensors",
            root / "port.ckpt",
            root / "diffusers",
        )
        config, dcfg = UNET_PRESETS["cifar10"], DIFFUSION_PRESETS["cifar10"]
        params = random_weights(config)
        save_weights(self.params_file, params, diffusion_config=dcfg, unet_config=config)
        (self.cache / "converted").mkdir(parents=True)
        for name in self.RELEASED:
            os.link(self.params_file, self.cache / "converted" / f"{name}-{REGISTRY[name].md5}.safetensors")

        import torch

        torch.save(
            {k: torch.from_numpy(np.asarray(v)) for k, v in flax_to_port(params, config).items()}, self.port_file
        )
        save_diffusers(self.diffusers, params, config, dcfg)
        for repo_id in self.HUB_IDS:
            repo = self.hub / f"models--{repo_id.replace('/', '--')}"
            (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
            for f in self.diffusers.iterdir():
                (repo / "snapshots" / HUB_COMMIT / f.name).symlink_to(f)
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text(HUB_COMMIT)

    def env(self) -> dict[str, str]:
        """The environment variables that point a process at the stand-ins, offline."""
        return {
            "DDPM_JAX_CACHE": str(self.cache),
            "HF_HUB_CACHE": str(self.hub),
            "HF_HUB_OFFLINE": "1",
            "DDPM_JAX_OFFLINE": "1",
        }

    def place(self, what: str, dest: Path):
        """Put a stand-in (`params`, `port` or `diffusers`) at `dest`, a link to the file made once."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if what == "diffusers":
            dest.mkdir()
            for f in self.diffusers.iterdir():
                (dest / f.name).symlink_to(f)
        else:
            os.link({"params": self.params_file, "port": self.port_file}[what], dest)


def run_command(argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run one documented command in `cwd`; `ddpm-jax` (or .venv/bin/ddpm-jax) and `python` are
    this interpreter's, so the command runs the code of this checkout."""
    import sys

    if argv[0] in ("ddpm-jax", ".venv/bin/ddpm-jax"):
        argv = [sys.executable, "-m", "ddpm_jax.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
