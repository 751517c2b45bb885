"""Programs kept on disk (`ddpm_jax.stored_programs`): a later process reads them instead of
tracing, the key names everything that shapes a program, damage is repaired, and code from
outside ddpm_jax is never stored."""

import json
import logging
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import batched_matmul, native, stored_programs
from ddpm_jax.samplers import get as get_sampler
from ddpm_jax.stored_programs import SUFFIX, StoredJit

EXPORTS = []


def _chunk(tables, x, k, *, scale, sampler):
    return {"y": x * scale + tables["a"][k], "name": jnp.full(x.shape[0], len(sampler.name))}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Programs in tmp_path, none held in this process: as a new process starts. EXPORTS counts
    the programs traced and exported (in a new process, each a trace of the function)."""
    monkeypatch.setattr(stored_programs, "folder", lambda: tmp_path)
    monkeypatch.setattr(stored_programs, "_PROGRAMS", type(stored_programs._PROGRAMS)())
    export = jax.export.export
    monkeypatch.setattr(jax.export, "export", lambda f, **kw: EXPORTS.append(f) or export(f, **kw))
    EXPORTS.clear()
    return tmp_path


def _stored(fingerprint="model A"):
    return StoredJit(jax.jit(_chunk, static_argnames=("scale", "sampler")), "chunk", fingerprint)


ARGS = ({"a": jnp.arange(4.0)}, jnp.ones((2, 3)), 2)


def test_a_new_process_reads_the_program_instead_of_tracing(store):
    want = jax.jit(_chunk, static_argnames=("scale", "sampler"))(*ARGS, scale=3.0, sampler=get_sampler("ddim"))
    got = _stored()(*ARGS, scale=3.0, sampler=get_sampler("ddim"))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert len(EXPORTS) == 1 and len(list(store.glob(f"*{SUFFIX}"))) == 1
    stored_programs._PROGRAMS.clear()  # a new process: nothing held, the file is there
    again = _stored()
    got = again(({"a": jnp.arange(4.0) + 1}), jnp.zeros((2, 3)), 1, scale=3.0, sampler=get_sampler("ddim"))
    np.testing.assert_array_equal(got["y"], np.full((2, 3), 2.0))  # other values, same program
    assert len(EXPORTS) == 1 and again._cache_size() == 1  # read, not traced


@pytest.mark.parametrize(
    "change",
    [
        dict(fingerprint="model B"),  # another model's configs
        dict(scale=4.0),  # a static argument
        dict(sampler=get_sampler("ddim", 0.5)),  # a sampler's field
        dict(x=jnp.ones((3, 3))),  # a shape
        dict(x=jnp.ones((2, 3), jnp.bfloat16)),  # a dtype
    ],
)
def test_whatever_shapes_the_program_is_in_its_key(store, change):
    kwargs = dict(scale=3.0, sampler=get_sampler("ddim"))
    _stored()(*ARGS, **kwargs)
    other = dict(kwargs, **{k: v for k, v in change.items() if k in kwargs})
    args = (ARGS[0], change.get("x", ARGS[1]), ARGS[2])
    _stored(change.get("fingerprint", "model A"))(*args, **other)
    assert len(list(store.glob(f"*{SUFFIX}"))) == 2 and len(EXPORTS) == 2


def test_the_source_of_ddpm_jax_is_in_the_key(store, monkeypatch):
    _stored()(*ARGS, scale=3.0, sampler=get_sampler("ddpm"))
    stored_programs._PROGRAMS.clear()
    monkeypatch.setattr(stored_programs, "source_hash", lambda: "edited")  # ddpm_jax's code changed
    _stored()(*ARGS, scale=3.0, sampler=get_sampler("ddpm"))
    assert len(list(store.glob(f"*{SUFFIX}"))) == 2 and len(EXPORTS) == 2


def _products(a, b):
    return batched_matmul.batched_matmul(a, b) + 1


def test_a_program_on_ddpm_jaxs_cpu_kernel_is_stored_read_back_and_keyed_by_it(store, monkeypatch):
    assert native.prepare()
    a, b = (np.random.default_rng(s).standard_normal((4, 8, 8)).astype(np.float32) for s in (0, 1))
    stored = StoredJit(jax.jit(_products), "products", "kernel")
    want = a @ b + 1
    np.testing.assert_allclose(stored(a, b), want, atol=1e-4)
    (path,) = store.glob(f"*{SUFFIX}")
    assert batched_matmul.TARGET in jax.export.deserialize(bytearray(path.read_bytes())).mlir_module()
    stored_programs._PROGRAMS.clear()  # a new process with the kernel ready reads it
    again = StoredJit(jax.jit(_products), "products", "kernel")
    np.testing.assert_allclose(again(a, b), want, atol=1e-4)
    assert len(EXPORTS) == 1 and again._cache_size() == 1
    for module in (native, batched_matmul):  # one without the kernels: its own program
        monkeypatch.setattr(module, "ready", lambda: False)
    without = StoredJit(jax.jit(_products), "products", "kernel")
    np.testing.assert_allclose(without(a, b), want, atol=1e-4)
    assert len(EXPORTS) == 2 and len(list(store.glob(f"*{SUFFIX}"))) == 2


def test_a_damaged_program_is_exported_again(store, caplog):
    _stored()(*ARGS, scale=3.0, sampler=get_sampler("ddpm"))
    (path,) = store.glob(f"*{SUFFIX}")
    path.write_bytes(b"not a program")
    stored_programs._PROGRAMS.clear()
    got = _stored()(*ARGS, scale=3.0, sampler=get_sampler("ddpm"))
    np.testing.assert_array_equal(got["y"], np.full((2, 3), 5.0))
    assert "cannot be read" in caplog.text and path.stat().st_size > 100


@dataclass(frozen=True)
class Outside:
    name: str = "x"
    step: object = staticmethod(lambda x: x)


def test_code_from_outside_ddpm_jax_is_never_stored(store):
    """A sampler whose step this package does not hold: its source is not in the key."""
    got = _stored()(*ARGS, scale=3.0, sampler=Outside())
    np.testing.assert_array_equal(got["y"], np.full((2, 3), 5.0))
    assert not list(store.glob(f"*{SUFFIX}"))


def test_off_without_the_compilation_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(stored_programs, "folder", lambda: None)
    f = partial(_stored(), scale=3.0, sampler=get_sampler("ddpm"))
    np.testing.assert_array_equal(f(*ARGS)["y"], np.full((2, 3), 5.0))
    assert not list(tmp_path.iterdir())


def test_the_unets_param_shapes_are_kept_for_the_next_process(store, monkeypatch, caplog):
    from ddpm_jax import run_layout
    from ddpm_jax.ops import Ops

    from .helpers import ONE_LEVEL_UNET

    ops = Ops(((4, 2),), min_channels=1)  # every 3x3 conv as Winograd: run shapes (4, 4, I, O)
    run_layout.run_shapes.cache_clear()
    traced = run_layout.run_shapes(ONE_LEVEL_UNET, ops)
    assert any(s.shape[:2] == (4, 4) for s in jax.tree.leaves(traced))
    (path,) = store.glob("run_shapes-*.json")
    run_layout.run_shapes.cache_clear()  # a new process: the file is there, nothing is traced
    with monkeypatch.context() as m:
        m.setattr(jax, "eval_shape", lambda *a, **k: pytest.fail("traced again"))
        assert run_layout.run_shapes(ONE_LEVEL_UNET, ops) == traced
    path.write_text("{not json")
    run_layout.run_shapes.cache_clear()
    assert run_layout.run_shapes(ONE_LEVEL_UNET, ops) == traced  # damaged: traced again, and rewritten
    assert "cannot be read" in caplog.text and json.loads(path.read_text())
    run_layout.run_shapes.cache_clear()


def test_a_programs_output_fed_back_runs_the_program_compiled_for_its_input(store, caplog):
    """A chain feeds each chunk's output (committed to the device) to the next chunk, after an x_T
    that is not: both calls run one lowered and compiled program (they lowered two before)."""
    call = partial(_stored(), scale=3.0, sampler=get_sampler("ddim"))
    tables = {"a": jnp.arange(4.0)}
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax._src.interpreters.pxla"):
        y = call(tables, np.ones((2, 3), np.float32), 0)["y"]  # from the host: not committed
        assert y.committed
        np.testing.assert_array_equal(call(tables, y, 1)["y"], np.full((2, 3), 10.0))
    assert sum("Compiling jit(call)" in r.getMessage() for r in caplog.records) == 1
