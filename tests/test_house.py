"""House rules a refactor could break silently: packaging, and references the repo holds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARNINGS = re.compile(r"BuildBackendWarning|SetuptoolsDeprecationWarning|absent from the `packages`")


def _tracked(*patterns):
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [f for f in out if (ROOT / f).is_file()]


def _held(cited: str, citing: str, docs: set[str]) -> bool:
    """Whether `cited` names a document of `docs`: a path relative to the citing
    file, or the tail of a repository path ("reference.md", "docs/limits.md")."""
    relative = os.path.normpath(os.path.join(os.path.dirname(citing), cited))
    return relative in docs or any(h == cited or h.endswith("/" + cited) for h in docs)


def test_code_and_docs_cite_only_what_the_repo_holds():
    """Every Markdown document a file names is one the repository holds (no file outside it),
    and no file cites sections of a facts sheet by number ("facts §")."""
    docs = set(_tracked("*.md"))
    named = re.compile(r"[A-Za-z0-9_./-]+\.md\b")
    offenders = []
    for f in _tracked("*.py", "*.md", "*.toml", "*.sh"):
        for i, line in enumerate((ROOT / f).read_text(errors="replace").splitlines(), 1):
            cited = [d for d in named.findall(line) if not _held(d, f, docs)]
            if cited or ("facts §" in line and f != "tests/test_house.py"):
                offenders.append(f"{f}:{i}: {cited or 'facts §'}")
    assert offenders == []
    assert "docs/reference.md" in docs


def test_the_wheel_builds_quietly_and_carries_the_bundled_model_and_run_shapes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not WARNINGS.search(proc.stdout + proc.stderr), WARNINGS.findall(proc.stdout + proc.stderr)
    (wheel,) = tmp_path.glob("ddpm_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "ddpm_jax/models/digits.safetensors",
        "ddpm_jax/models/run_shapes.json",
        "ddpm_jax/convert/resolve.py",
        "ddpm_jax/demo/app.py",
        "ddpm_jax/pipeline.py",
        "ddpm_jax/batched_matmul.cc",
        "ddpm_jax/group_norm.cc",
    } <= names
    size = zipfile.ZipFile(wheel).getinfo("ddpm_jax/models/digits.safetensors").file_size
    assert size == (ROOT / "ddpm_jax" / "models" / "digits.safetensors").stat().st_size


def test_the_editable_install_is_quiet(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-v", "--no-deps", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert not WARNINGS.search(out), WARNINGS.findall(out)
