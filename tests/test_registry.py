"""`Diffusion.from_pretrained(name)`: the registry of the port's checkpoints (served
here by a loopback server under a tiny test entry), the conversion cache, local
checkpoints, and `ddpm-jax convert` both ways."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from ddpm_jax import Diffusion
from ddpm_jax.cli import main
from ddpm_jax.config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig
from ddpm_jax.convert.port import flax_to_port
from ddpm_jax.convert.registry import HUB_MODELS, REGISTRY, PortCheckpoint, available_models
from ddpm_jax.download import DownloadError
from ddpm_jax.weights import flatten_params, load_weights, save_weights

from .helpers import CONVERT_UNET, CheckpointServer, random_params, save_diffusers_folder

torch = pytest.importorskip("torch")

TINY_DIFFUSION = DiffusionConfig(num_diffusion_timesteps=20, model_var_type="fixedsmall")


def torch_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, buf)
    return buf.getvalue()


def same_params(a, b):
    a, b = flatten_params(a), flatten_params(b)
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    """A tiny port checkpoint served on 127.0.0.1 and registered as 'tiny_test'."""
    params = random_params(CONVERT_UNET, seed=11)
    body = torch_bytes(flax_to_port(params, CONVERT_UNET))
    server = CheckpointServer({"/tiny.ckpt": body})
    entry = PortCheckpoint(
        server.url("/tiny.ckpt"),
        "tiny_test_model/model-1.ckpt",
        hashlib.md5(body).hexdigest(),
        TINY_DIFFUSION,
        CONVERT_UNET,
    )
    monkeypatch.setitem(REGISTRY, "tiny_test", entry)
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    for var in ("HF_HUB_OFFLINE", "DDPM_JAX_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield server, entry, params
    server.close()


def test_registered_name_downloads_converts_and_caches(tiny_entry, tmp_path, monkeypatch):
    server, entry, params = tiny_entry
    model = Diffusion.from_pretrained("tiny_test")
    assert model.unet_config == CONVERT_UNET and model.diffusion_config == TINY_DIFFUSION
    assert same_params(model.params, params)
    cache = tmp_path / "cache"
    assert (cache / "tiny_test_model" / "model-1.ckpt").is_file()
    converted = cache / "converted" / f"tiny_test-{entry.md5}.safetensors"
    assert converted.is_file() and server.requests["/tiny.ckpt"] == 1

    # Converted once: later loads read the safetensors, even offline with the .ckpt gone.
    (cache / "tiny_test_model" / "model-1.ckpt").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = Diffusion.from_pretrained("tiny_test")
    assert same_params(again.params, params) and server.requests["/tiny.ckpt"] == 1


def test_corrupt_converted_cache_is_converted_again(tiny_entry, tmp_path):
    server, entry, params = tiny_entry
    Diffusion.from_pretrained("tiny_test")
    converted = tmp_path / "cache" / "converted" / f"tiny_test-{entry.md5}.safetensors"
    converted.write_bytes(converted.read_bytes()[:100])
    assert same_params(Diffusion.from_pretrained("tiny_test").params, params)
    assert load_weights(converted)[1] == CONVERT_UNET and server.requests["/tiny.ckpt"] == 1


def test_offline_and_not_cached_is_a_clear_error(tiny_entry, tmp_path, monkeypatch):
    server, entry, _ = tiny_entry
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        Diffusion.from_pretrained("tiny_test")
    dest = tmp_path / "cache" / "tiny_test_model" / "model-1.ckpt"
    assert f"download {entry.url} and save it as {dest} (md5 {entry.md5})" in str(err.value)
    assert server.requests["/tiny.ckpt"] == 0


def test_the_eight_released_checkpoints():
    names = {"cifar10", "lsun_bedroom", "lsun_cat", "lsun_church"}
    assert set(REGISTRY) >= names | {f"ema_{n}" for n in names}
    c = REGISTRY["cifar10"]
    assert c.url == "https://heibox.uni-heidelberg.de/f/869980b53bf5416c8a28/?dl=1"
    assert (c.filename, c.md5) == ("diffusion_cifar10_model/model-790000.ckpt", "82ed3067fd1002f5cf4c339fb80c4669")
    e = REGISTRY["ema_lsun_church"]
    assert e.url == "https://heibox.uni-heidelberg.de/f/44ccb50ef3c6436db52e/?dl=1"
    assert (e.filename, e.md5) == (
        "ema_diffusion_lsun_church_model/model-4432000.ckpt",
        "fdc68a23938c2397caba4a260bc2445f",
    )
    for name in ("cifar10", "ema_cifar10"):
        assert REGISTRY[name].diffusion_config.model_var_type == "fixedlarge"
        assert REGISTRY[name].unet_config == UNET_PRESETS["cifar10"]
    for name in ("lsun_bedroom", "ema_lsun_cat", "lsun_church"):
        assert REGISTRY[name].diffusion_config == DIFFUSION_PRESETS["lsun"]
        assert REGISTRY[name].unet_config == UNET_PRESETS["lsun"]
    assert len({r.md5 for r in REGISTRY.values()}) == len(REGISTRY)
    files = {  # the port's cache layout (docs/reference.md §3)
        "cifar10": "diffusion_cifar10_model/model-790000.ckpt",
        "ema_lsun_bedroom": "ema_diffusion_lsun_bedroom_model/model-2388000.ckpt",
        "lsun_cat": "diffusion_lsun_cat_model/model-1761000.ckpt",
        "ema_lsun_cat": "ema_diffusion_lsun_cat_model/model-1761000.ckpt",
        "lsun_church": "diffusion_lsun_church_model/model-4432000.ckpt",
    }
    assert {n: REGISTRY[n].filename for n in files} == files


def test_available_models_lists_names_and_hub_ids():
    models = available_models()
    assert "ema_lsun_bedroom" in models and "google/ddpm-cifar10-32" in models
    assert {"google/ddpm-celebahq-256", "google/ddpm-ema-celebahq-256", "google/ddpm-ema-church-256"} <= set(HUB_MODELS)
    assert len(HUB_MODELS) == 9


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'cifar100'.*ema_cifar10.*google/ddpm-cat-256"):
        Diffusion.from_pretrained("cifar100")


def test_cli_to_torch_and_back_is_exact(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(UNET_PRESETS, "tiny", CONVERT_UNET)  # a preset, so the shapes pick it
    monkeypatch.setitem(DIFFUSION_PRESETS, "tiny", TINY_DIFFUSION)
    params = random_params(CONVERT_UNET, seed=12)
    save_weights(tmp_path / "ours.safetensors", params, diffusion_config=TINY_DIFFUSION, unet_config=CONVERT_UNET)
    assert main(["convert", "--to-torch", str(tmp_path / "ours.safetensors"), str(tmp_path / "port.ckpt")]) == 0
    state = torch.load(tmp_path / "port.ckpt", weights_only=True)
    assert state["mid.attn_1.q.weight"].shape == (64, 64, 1, 1) and len(state) == len(flatten_params(params))

    assert main(["convert", str(tmp_path / "port.ckpt"), str(tmp_path / "back.safetensors")]) == 0  # preset by shape
    got_d, got_u, got = load_weights(tmp_path / "back.safetensors")
    assert (got_d, got_u) == (TINY_DIFFUSION, CONVERT_UNET) and same_params(got, params)

    assert main(["convert", str(tmp_path / "port.ckpt"), str(tmp_path / "x.safetensors"), "--config", "lsun"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the UNet config 'lsun'" in err and "pass --config tiny" in err

    # A local checkpoint path loads directly (converted once, into the cache).
    assert same_params(Diffusion.from_pretrained(tmp_path / "port.ckpt").params, params)
    assert len(list((tmp_path / "cache" / "converted").glob("local-*.safetensors"))) == 1


def test_cli_converts_a_diffusers_folder(tmp_path):
    from ddpm_jax.convert.diffusers_format import diffusers_to_flax

    from .helpers import numpy_state_dict, random_diffusers_unet

    model = random_diffusers_unet(CONVERT_UNET, seed=13)
    folder = save_diffusers_folder(model, tmp_path / "model", variance="fixed_large", num_train_timesteps=30)
    assert main(["convert", str(folder), str(tmp_path / "out.safetensors")]) == 0
    dcfg, ucfg, params = load_weights(tmp_path / "out.safetensors")
    assert ucfg == CONVERT_UNET and dcfg == DiffusionConfig(num_diffusion_timesteps=30, model_var_type="fixedlarge")
    assert same_params(params, diffusers_to_flax(numpy_state_dict(model), CONVERT_UNET))
    assert main(["convert", str(folder), str(tmp_path / "x.safetensors"), "--config", "cifar10"]) == 2


def test_tiny_local_checkpoint_fits_no_preset(tmp_path):
    (tmp_path / "tiny.ckpt").write_bytes(torch_bytes(flax_to_port(random_params(CONVERT_UNET), CONVERT_UNET)))
    with pytest.raises(ValueError, match="fits none of the UNet presets"):
        Diffusion.from_pretrained(tmp_path / "tiny.ckpt")
