"""Every benchmark script in its quickest mode on a tiny model: seconds each, so a
refactor cannot silently break them. Their numbers are not checked (speed is
never asserted), only that they run through the public API and report what
they say they do."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_jax.weights import save_weights

from .helpers import ONE_LEVEL_UNET, tiny_diffusion_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A one-level 8x8 grayscale model over a 10-step process, saved as params."""
    path = tmp_path_factory.mktemp("bench") / "tiny.safetensors"
    tiny_diffusion_model(ONE_LEVEL_UNET, T=10).save_pretrained(path)
    return str(path)


def run(cmd, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(map(str, cmd)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def bench(script, *args, timeout=300) -> str:
    return run([sys.executable, ROOT / "bench" / script, *args], timeout=timeout).stdout


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True], ids=["sampling", "training"])
def test_scaling(tiny_path, train):
    out = bench(
        "scaling.py",
        "--model",
        tiny_path,
        "--devices",
        "1,2",
        "--batch",
        4,
        "--steps",
        2,
        "--reps",
        1,
        *(["--train"] if train else []),
    )
    rows = re.findall(r"^\s+(\d)\s+([\d.]+)\s", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1]) > 0 for r in rows), out


def test_conv_policy_times_each_conv_and_the_whole_step_under_two_tables_and_in_micro_batches():
    out = bench("conv_policy.py", "--preset", "digits", "--batches", "1", "--reps", "1")
    rows = re.findall(r"^batch\s+1\s+(\d+)x\d+\s+(\d+)->(\d+)\s+direct .* best (\w+)", out, re.M)
    assert rows and all(best in ("direct", "F2", "F4") for *_, best in rows), out
    out = bench("conv_policy.py", "--preset", "digits", "--batches", "1,2", "--reps", "1", "--against", "4:2,8:4")
    steps = re.findall(
        r"^batch\s+(\d)\s+CPU_WINOGRAD .* against \(\(4, 2\), \(8, 4\)\) .* first: 1\.000, ([\d.]+)\)", out, re.M
    )
    assert [s[0] for s in steps] == ["1", "2"] and all(float(s[1]) > 0 for s in steps), out
    out = bench("conv_policy.py", "--preset", "digits", "--batches", "3", "--reps", "1", "--micro", "0,2")
    steps = re.findall(r"^batch\s+3\s+micro 0 .* micro 2 .* first: 1\.000, ([\d.]+)\)", out, re.M)
    assert len(steps) == 1 and float(steps[0]) > 0, out


def test_kernels_bench_times_the_step_with_and_without_each_kernel():
    out = bench("kernels.py", "--preset", "digits", "--reps", "3")
    gap = float(re.search(r"outputs within ([\d.e+-]+) of each other", out).group(1))
    rows = dict(re.findall(r"^\s+(\w+)\s+([\d.]+) ms/step", out, re.M))
    assert set(rows) == {"library", "no_border", "flax", "xla_products"} and all(float(v) > 0 for v in rows.values()), (
        out
    )
    assert gap < 1e-4 and "products on the kernel: none in this layout" in out, out  # digits: XLA's convs only


@pytest.mark.parametrize("torch", [pytest.param(False), pytest.param(True, marks=pytest.mark.slow)], ids=["", "torch"])
def test_first_sample(tiny_path, torch):
    job = ["--n", 4] if torch else ["--steps", 8]  # 4 x all 10 steps: longer than a short job; 1 x 8: short
    out = bench("first_sample.py", "--model", tiny_path, "--runs", 1, *job, *(["--torch"] if torch else []))
    assert re.search(r"cold \(empty compilation cache\): [\d.]+ s", out) and "warm: median" in out, out
    assert ("first 4 pictures (one batch)" if torch else "first picture of") in out, out
    for who in ("ddpm_jax cold", "ddpm_jax warm"):
        phases = rf"{who}: import [\d.]+, load [\d.]+, first chain [\d.]+, the chain again [\d.]+, save [\d.]+"
        assert re.search(rf"{phases}, conv {'auto' if torch else 'xla'} ", out), out
    if torch:
        assert re.search(r"PyTorch \+ diffusers: median [\d.]+ s", out), out
        assert re.search(r"PyTorch \+ diffusers: import [\d.]+, load [\d.]+, chain [\d.]+, save", out), out


@pytest.mark.slow
def test_digits_quality(tiny_path, tmp_path):
    out = bench("digits_quality.py", "--model", tiny_path, "--n", 20, "--batch", 20, "--json", tmp_path / "q.json")
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["samples"]["n"] == 20 and 0 <= result["samples"]["confident"] <= 1
    assert (result["sampler"], result["steps"]) == ("ddpm", 10)  # the model's own chain: all T
    assert result["heldout_real"]["n"] == 450 and "targets" in result and "held-out real digits" in out


@pytest.mark.slow
def test_few_steps_times_the_distilled_chain_beside_its_teachers(tmp_path):
    teacher = tiny_diffusion_model(ONE_LEVEL_UNET, T=100)
    teacher.save_pretrained(tmp_path / "teacher.safetensors")
    distilled = dataclasses.replace(teacher.diffusion_config, prediction_type="v", distilled_steps=4)
    save_weights(
        tmp_path / "distilled.safetensors", teacher.params, diffusion_config=distilled, unet_config=ONE_LEVEL_UNET
    )
    paths = (tmp_path / "distilled.safetensors", tmp_path / "teacher.safetensors")
    out = bench("few_steps.py", "--distilled", paths[0], "--teacher", paths[1], "--n", 2, "--runs", 1, "--repeats", 1)
    rows = re.findall(
        r"^(distilled, own chain|DPM-Solver\+\+\(2M\), 10 steps|DDIM \(eta 0\), 50 steps)\s+\S+\s+(\d+)\s", out, re.M
    )
    assert rows == [
        ("distilled, own chain", "4"),
        ("DPM-Solver++(2M), 10 steps", "10"),
        ("DDIM (eta 0), 50 steps", "50"),
    ], out
    assert len(re.findall(r": cold [\d.]+ s; warm median [\d.]+ s", out)) == 3, out


def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))


def check_sampling_results(res, variants, preset="tiny"):
    """The JSON of bench/sampling.py holds a sane measurement of every variant."""
    assert res["machine"]["cpu_model"] == cpu_model()
    assert res["skipped"] == [] and res["failed"] == [] and set(res["variants"]) == set(variants)
    assert {r["variant"] for r in res["runs"]} == set(variants)
    for r in res["runs"]:
        assert r["preset"] == preset and r["batch"] == 1 and len(r["step_s"]) == 2
        assert all(s > 0 for s in r["step_s"]) and r["peak_rss_mb"] > 0
        if r["variant"].startswith("jax"):
            assert r["compile_s"] > 0 and r["flops"] > 0 and all(s > 0 for s in r["sampler_s"])
            assert 0 < r["run_flops"] <= r["flops"] * 1.05  # Winograd (or the same program) does no more work
    assert {c["variant"] for c in res["chains"]} == set(variants)
    assert all(c["steps"] == 20 and c["first_s"] > 0 and c["warm_s"] > 0 for c in res["chains"])
    diffs = res["parity"]["max_abs_diff"]
    assert set(diffs) == {v for v in variants if not res["variants"][v]["compiled"]}
    for v, d in diffs.items():  # float32 within the tests' 1e-4; bfloat16 near but not equal
        assert (0 <= d < 1e-4) if res["variants"][v]["precision"] == "float32" else (0 < d < 0.5), (v, d)


@pytest.mark.slow
def test_sampling_bench_times_every_cpu_engine_checked_against_pytorch(tmp_path):
    out = tmp_path / "engines.json"
    variants = ["jax_fast", "jax_fast_whole", "torch", "onnxruntime", "openvino"]
    text = bench("sampling.py", "--preset", "tiny", "--variants", ",".join(variants), "--json", out, timeout=900)
    check_sampling_results(json.loads(out.read_text()), variants)
    assert re.search(r"jax_fast: vs torch [\d.]+x, vs onnxruntime [\d.]+x, vs openvino [\d.]+x", text), text


def test_step_profile_puts_each_op_of_both_profiles_in_a_part_of_the_unet(tmp_path):
    out = tmp_path / "profile.json"
    text = bench("step_profile.py", "--preset", "tiny", "--reps", "2", "--json", out)
    res = json.loads(out.read_text())
    for engine in ("ddpm_jax", "onnxruntime"):
        parts, total = res[engine]["parts"], sum(ms for ms, _ in res[engine]["parts"].values())
        assert res[engine]["unprofiled_ms"] > 0, engine
        for name in ("3x3 convolutions", "GroupNorm and swish", "attention", "1x1 shortcuts"):
            assert parts[name][0] > 0 and parts[name][1] >= 1, (engine, name, parts)
        assert parts.get("other", [0])[0] < 0.5 * total, (engine, parts)  # the modules were recognised
    assert "3x3 convolutions" in text and "step, unprofiled" in text, text


@pytest.mark.slow
def test_precision_bench_prints_and_saves_each_options_deviation(tmp_path):
    out = tmp_path / "precision.json"
    proc = run([sys.executable, "bench/precision.py", "--steps", "3", "--n", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    rows = {(r["precision"], r["conv"]): r for r in res["options"]}
    assert list(rows) == [
        ("float32", "xla"),
        ("float32", "winograd"),
        ("bfloat16", "xla"),
        ("mixed_bf16", "xla"),
        ("mixed_bf16", "winograd"),
    ]
    assert rows["float32", "xla"]["max_abs"] == 0 and rows["float32", "winograd"]["max_abs"] < 1e-3
    for key in (("bfloat16", "xla"), ("mixed_bf16", "xla"), ("mixed_bf16", "winograd")):
        assert 0 < rows[key]["max_abs"] < 1 and 0 <= rows[key]["pixels_off_by_8"] < 0.5
    assert all(r["ms_per_step"] > 0 for r in rows.values()) and res["steps"] == 3
    assert "mixed_bf16  winograd" in proc.stdout


@pytest.mark.slow
def test_gpu_script_dry_run_runs_the_sampling_bench_on_a_tiny_unet(tmp_path):
    variants = ["jax_fast", "torch"]
    proc = run(
        ["bash", "bench/gpu.sh", "--cpu-dry-run", "--variants", ",".join(variants), "--out", str(tmp_path)],
        env={"PYTHON": sys.executable},
    )
    check_sampling_results(json.loads((tmp_path / "gpu.json").read_text()), variants)
    out = proc.stdout
    assert (tmp_path / "gpu.txt").read_text() == out and "parity on" in out and cpu_model() in out
    assert "tiny batch 1 jax_fast: vs torch" in out and "whole chain tiny batch 1" in out
    bad = subprocess.run(
        [sys.executable, "bench/sampling.py", "--variants", "jax_fast,nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown variants ['nope']" in bad.stderr


def test_sampling_bench_records_a_failing_variant_and_goes_on_to_the_next(tmp_path):
    """On a machine without CUDA, both GPU variants fail: each is recorded with its error, the
    second is still tried, the table is printed and the exit status says so."""
    out = tmp_path / "failed.json"
    cmd = [sys.executable, "bench/sampling.py", "--device", "gpu", "--cases", "tiny:1", "--bf16-cases", ""]
    cmd += ["--chain", "", "--parity", "", "--variants", "jax_xla,torch", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    res = json.loads(out.read_text())
    assert proc.returncode == 1 and res["runs"] == [] and [f["variant"] for f in res["failed"]] == ["jax_xla", "torch"]
    assert "CUDA" in res["failed"][1]["error"] and "torch failed: " in proc.stdout and "jax_xla failed: " in proc.stdout


@pytest.mark.slow
def test_gpu_script_full_dry_run_with_torch_compile(tmp_path):
    run(["bash", "bench/gpu.sh", "--cpu-dry-run", "--out", str(tmp_path)], env={"PYTHON": sys.executable}, timeout=1800)
    res = json.loads((tmp_path / "gpu.json").read_text())
    check_sampling_results(
        res, ["jax_xla", "torch", "torch_compile", "jax_bf16", "torch_bf16", "torch_compile_bf16", "jax_mixed_bf16"]
    )
