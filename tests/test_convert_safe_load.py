"""Checkpoints are read without running pickled code: torch.load(weights_only=True), safetensors."""

from __future__ import annotations

import os
import pickle
import pickletools

import numpy as np
import pytest

from ddpm_jax.convert.safe_load import load_safetensors, load_state_dict, load_torch

torch = pytest.importorskip("torch")


class Payload:
    """Unpickling this calls os.mkdir(marker): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    state = {"conv_in.weight": torch.zeros(2), "evil": Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    with pytest.raises(ValueError, match=r"refusing to load .*model\.ckpt.* could run code .*weights_only"):
        load_state_dict(path)
    assert not marker.exists()
    # The file really is armed: its opcodes call os.mkdir (read, never executed).
    if writer == "pickle.dump":
        ops = list(pickletools.genops(path.read_bytes()))
        assert "mkdir" in [arg for _, arg, _ in ops] and "REDUCE" in [op.name for op, _, _ in ops]


def test_plain_state_dict_loads_as_float32_numpy(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"a.weight": torch.arange(6, dtype=torch.float64).reshape(2, 3), "a.bias": torch.ones(2)}, path)
    state = load_torch(path)
    assert state["a.weight"].dtype == np.float32 and state["a.weight"].shape == (2, 3)
    np.testing.assert_array_equal(state["a.weight"], np.arange(6).reshape(2, 3))


def test_non_tensor_contents_are_rejected(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"a": 3}, path)
    with pytest.raises(ValueError, match="not a state_dict of tensors"):
        load_torch(path)


def test_safetensors_read_without_torch(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"x": np.arange(4, dtype=np.float16)}, str(path))
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not allowed here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    got = load_safetensors(path)
    assert got["x"].dtype == np.float32 and list(got["x"]) == [0, 1, 2, 3]


def test_unknown_suffix_and_garbage_are_clear_errors(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"xx")
    with pytest.raises(ValueError, match="unknown checkpoint type '.npz'"):
        load_state_dict(tmp_path / "m.npz")
    (tmp_path / "m.safetensors").write_bytes(b"not really")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state_dict(tmp_path / "m.safetensors")
    (tmp_path / "m.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="m.ckpt"):
        load_state_dict(tmp_path / "m.ckpt")
