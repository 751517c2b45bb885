"""House rules a refactor could break silently: packaging, and references the repo holds."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARNINGS = re.compile(r"BuildBackendWarning|SetuptoolsDeprecationWarning|absent from the `packages`")


def _tracked_text_files():
    out = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", "*.sh"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [ROOT / f for f in out if (ROOT / f).is_file()]


def test_code_and_docs_cite_only_what_the_repo_holds():
    pattern = re.compile(r"facts §|shared/reference")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _tracked_text_files() if p.name != "test_house.py"
                 for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert (ROOT / "docs" / "reference.md").is_file()


def test_the_wheel_builds_quietly_and_carries_the_bundled_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not WARNINGS.search(proc.stdout + proc.stderr), WARNINGS.findall(proc.stdout + proc.stderr)
    (wheel,) = tmp_path.glob("ddpm_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"ddpm_jax/models/digits.safetensors", "ddpm_jax/convert/resolve.py", "ddpm_jax/demo/app.py",
            "ddpm_jax/pipeline.py"} <= names
    size = zipfile.ZipFile(wheel).getinfo("ddpm_jax/models/digits.safetensors").file_size
    assert size == (ROOT / "ddpm_jax" / "models" / "digits.safetensors").stat().st_size


def test_the_editable_install_is_quiet(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-v", "--no-deps", "-e", str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert not WARNINGS.search(out), WARNINGS.findall(out)
