"""What the tests share: tiny configs, random PyTorch peers, a loopback server.

The tiny configs live here, and only here; test modules import from this
module and `conftest.py`, never from each other.

`diffusers_to_port` renames a diffusers state_dict into the port's keys with
plain string edits, written apart from the converter's tables so that the two
tables are each checked against a real PyTorch model.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket

import jax
import numpy as np

from ddpm_jax import Diffusion, DiffusionConfig, UNetConfig
from ddpm_jax.train import TrainConfig
from ddpm_jax.unet import init_params
from ddpm_jax.weights import expected_shapes, unflatten_params

# Two levels with attention at 4x4 and dropout: every part of the UNet, 8x8 grayscale.
TINY_UNET = UNetConfig(
    resolution=8,
    in_channels=1,
    out_ch=1,
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.1,
)
TINY_DIFFUSION = DiffusionConfig(num_diffusion_timesteps=40, model_var_type="fixedlarge")
# One level, no attention below the mid block: compiles fastest (demo, training).
ONE_LEVEL_UNET = UNetConfig(
    resolution=8, in_channels=1, out_ch=1, ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.1
)
# RGB, every part, no dropout: whole chains against diffusers' PyTorch scheduler.
RGB_UNET = UNetConfig(resolution=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
# Three levels, attention at the middle one only, nin_shortcuts, both resamplers:
# the converter's tables against a real PyTorch model.
CONVERT_UNET = UNetConfig(resolution=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.0)
# The cifar10 preset's shape (32x32 RGB, four levels, attention at 16x16) with
# few channels: every Winograd tile size of the fast CPU path, and quick.
CIFAR_SHAPED_UNET = UNetConfig(
    resolution=32, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0
)
MINI_TRAIN = TrainConfig(learning_rate=1e-3, warmup_steps=20, ema_decay=0.99, batch_size=16, random_flip=False, seed=0)


def tiny_diffusion_model(unet=TINY_UNET, T=40, seed=0, **kwargs) -> Diffusion:
    """A randomly initialised model of `unet` over a T-step linear process."""
    return Diffusion(
        diffusion_config=DiffusionConfig(num_diffusion_timesteps=T),
        unet_config=unet,
        params=init_params(unet, jax.random.key(seed)),
        **kwargs,
    )


# The demo's tiny model: a T-step process, compiled in chunks of CHUNK steps.
T = 40
CHUNK = 5


def make_tiny_model(path) -> str:
    """The one-level model saved as ddpm_jax params at `path`."""
    tiny_diffusion_model(ONE_LEVEL_UNET, T).save_pretrained(path)
    return str(path)


def tiny_models(path):
    """The demo's model registry: the tiny model, plus a choice that cannot be loaded."""
    from ddpm_jax.demo.models import Models

    return Models({"tiny": (path, path), "broken": ("no_such_model", "ema_no_such_model")}, chunk_size=CHUNK)


def script_env(**variables) -> dict[str, str]:
    """The environment for a `python -c` script that a test starts: this one, `variables`, and
    JAX's persistent compilation cache of the run (where `enable_compilation_cache` puts it), so
    that the script reads what the tests compiled, and the tests what it compiled."""
    from ddpm_jax.download import cache_dir

    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir() / "jax_compilation_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **variables,
    }


def four_images(seed) -> np.ndarray:
    """4 uint8 images for the tiny model's bound, with pixels at both ends of the grid."""
    images = np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    images[0, :2] = 0
    images[1, -2:] = 255
    return images


FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
# Run as `python -c FOUR_DEVICE_SCRIPT saved.safetensors out.npz` with XLA_FLAGS=FOUR_DEVICES:
# the tiny model on a mesh of 4 CPU devices, in one process for what test_scale_out.py (samples)
# and test_likelihood.py (the bound) compare with one device. Each part's failure is kept, with
# its traceback, for the test it concerns.
FOUR_DEVICE_SCRIPT = """
import json, sys, traceback
import jax, numpy as np
from ddpm_jax import Diffusion
from ddpm_jax.sharding import data_mesh
from tests.helpers import four_images

saved, out = sys.argv[1:3]
assert jax.device_count() == 4
m = Diffusion.from_pretrained(saved, chunk_size=8, mesh=data_mesh())
arrays, errors = {}, {}


def samples():
    x = m.denoise(8, n_steps=20, key=3)
    assert len(x.sharding.device_set) == 4, x.sharding
    x = m.denoise(8, x=x, curr_step=20, key=3)
    try:
        m.denoise(6, key=3)
    except ValueError as err:
        assert "multiple of 4" in str(err)
    else:
        raise AssertionError("a batch of 6 over 4 devices must be refused")
    arrays["samples"] = np.asarray(x)


def bound():
    x = four_images(8)
    b = m.bpd(x, key=1)
    arrays.update({f"bound.{k}": np.asarray(v) for k, v in b._asdict().items()})
    try:
        m.bpd(x[:3], key=1)
    except ValueError as err:
        assert "multiple of 4" in str(err), err
    else:
        raise AssertionError("3 images over 4 devices must be refused")


for part in (samples, bound):
    try:
        part()
    except Exception:
        errors[part.__name__] = traceback.format_exc()
np.savez(out, errors=json.dumps(errors), **arrays)
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1, as the system assigns them (ephemeral, not reused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(models, max_upload_mb=10, limits=None, **kwargs):
    """The demo app on 127.0.0.1 (a free port), closed afterwards; yields its URL.
    `limits`: more of `launch`'s upload bounds (client_upload_mb, total_upload_mb)."""
    from ddpm_jax.demo.app import build_app, launch

    app = build_app(models, "tiny", **kwargs)
    # A port the system picks, not Gradio's first free one from 7860: test workers
    # running side by side must never reach each other's server.
    _, url, _ = launch(
        app,
        host="127.0.0.1",
        port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        max_upload_mb=max_upload_mb,
        **(limits or {}),
    )
    try:
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        app.close()


def demo_client(url):
    """A gradio_client session of the served demo (each Client is its own tab)."""
    import gradio_client

    return gradio_client.Client(url, verbose=False, download_files=True)


def save_diffusers_folder(model, folder, *, safe=True, variance="fixed_small", num_train_timesteps=1000):
    """A diffusers UNet2DModel saved with a DDPMScheduler config beside it."""
    from diffusers import DDPMScheduler

    model.save_pretrained(folder, safe_serialization=safe)
    DDPMScheduler(num_train_timesteps=num_train_timesteps, variance_type=variance).save_pretrained(folder)
    return folder


def random_diffusers_unet(config: UNetConfig, seed: int = 0):
    """A UNet2DModel for `config` with every parameter random (none left at 0 or 1).

    Weights ~ N(0, 1/fan_in); GroupNorm scales 1 + N(0, 0.3^2); every bias N(0, 0.3^2).
    """
    import torch
    from diffusers import UNet2DModel

    from ddpm_jax.convert.diffusers_format import unet_config_to_diffusers

    torch.manual_seed(seed)
    model = UNet2DModel(**unet_config_to_diffusers(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # GroupNorm scale
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / np.sqrt(np.prod(p.shape[1:])))
    return model


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


_MID = {("resnets", "0"): "mid.block_1", ("attentions", "0"): "mid.attn_1", ("resnets", "1"): "mid.block_2"}
_ATTN_1X1 = ((".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".proj_out."))


def diffusers_to_port(state: dict[str, np.ndarray], levels: int) -> dict[str, np.ndarray]:
    """A UNet2DModel state_dict -> the pesser/pytorch_diffusion state_dict of the same net."""
    out = {}
    for key, value in state.items():
        k = key.replace("time_embedding.linear_1", "temb.dense.0").replace("time_embedding.linear_2", "temb.dense.1")
        k = k.replace("conv_norm_out", "norm_out")
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", k)
        if m:
            side, b, part, j, rest = m.groups()
            level = int(b) if side == "down" else levels - 1 - int(b)
            k = {
                "resnets": f"{side}.{level}.block.{j}.{rest}",
                "attentions": f"{side}.{level}.attn.{j}.{rest}",
                "downsamplers": f"down.{level}.downsample.{rest}",
                "upsamplers": f"up.{level}.upsample.{rest}",
            }[part]
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", k)
        if m:
            k = f"{_MID[m[1], m[2]]}.{m[3]}"
        k = k.replace(".time_emb_proj.", ".temb_proj.").replace(".conv_shortcut.", ".nin_shortcut.")
        k = k.replace(".group_norm.", ".norm.")
        for new, old in _ATTN_1X1:
            if new in k:
                k = k.replace(new, old)
                if value.ndim == 2:  # diffusers' Linear -> the port's 1x1 Conv2d
                    value = value[:, :, None, None]
        out[k] = value
    return out


def random_params(config: UNetConfig, seed: int = 0) -> dict:
    """Random float32 params of the right shapes, without running Flax's init."""
    rng = np.random.default_rng(seed)
    flat = {k: rng.standard_normal(s, dtype=np.float32) for k, s in expected_shapes(config).items()}
    return unflatten_params(flat)


def zero_state_dict(shapes: dict) -> dict:
    """Shape-only stand-ins (no memory) for strictness checks of large configs."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


class CheckpointServer:
    """An HTTP server on 127.0.0.1 serving `files` (path -> bytes), made by a test.

    `plan[path]` is a list of behaviours used up one per request (GET or
    HEAD), then "ok":
    "ok", "slow" (the body in pieces over ~0.5 s), "truncate" (half the
    announced body, then the connection closes), "corrupt" (other bytes of the
    same length), "500", "404",
    "drip" (the announced body one byte every `drip_interval` s),
    "stall" (accepts, reads the request, never answers),
    "endless" (no Content-Length, bytes until the client hangs up),
    "huge" (announces 10**12 bytes, sends none).
    `requests[path]` counts requests. Every behaviour ends when the server closes.
    """

    def __init__(self, files: dict[str, bytes], drip_interval: float = 0.3):
        import collections
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files, self.plan, self.requests = files, {}, collections.Counter()
        self.drip_interval = drip_interval
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head=False):
                server.requests[self.path] += 1
                body = server.files.get(self.path)
                steps = server.plan.get(self.path, [])
                how = steps.pop(0) if steps else "ok"
                try:
                    self._answer(body, how, head)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up, as it should on a bad server

            def _answer(self, body, how, head):
                if how == "stall":
                    server.closing.wait()
                    return
                if body is None or how in ("404", "500"):
                    self.send_error(500 if how == "500" else 404)
                    return
                self.send_response(200)
                if how == "endless":
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(10**12 if how == "huge" else len(body)))
                self.end_headers()
                if head or how == "huge":
                    return
                if how == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif how == "corrupt":
                    self.wfile.write(bytes(b ^ 0xFF for b in body))
                elif how == "slow":
                    for i in range(10):
                        self.wfile.write(body[i * len(body) // 10 : (i + 1) * len(body) // 10])
                        self.wfile.flush()
                        server.closing.wait(0.05)
                elif how == "drip":
                    for i in range(len(body)):
                        if server.closing.is_set():
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        server.closing.wait(server.drip_interval)
                elif how == "endless":
                    block = bytes(1 << 16)
                    while not server.closing.is_set():
                        self.wfile.write(block)
                else:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def random_inception_state(seed: int = 0) -> dict:
    """A state_dict for ddpm_jax.inception.InceptionV3 (the standard weights file's keys),
    random but well scaled: conv weights N(0, 2 / fan_in), random batch-norm statistics,
    so that features stay O(1) through the 94 convolutions."""
    import torch

    from ddpm_jax.inception import InceptionV3

    torch.manual_seed(seed)
    net = InceptionV3()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 4:
                p.normal_(0.0, (2.0 / p[0].numel()) ** 0.5)
            elif p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return net.state_dict()


def inpaint_inputs(folder, keep_columns: int = 5) -> tuple[str, str]:
    """A random 8x8 grayscale picture and a mask that keeps its left `keep_columns` (white),
    saved as PNGs in `folder`: the files `ddpm-jax inpaint --image/--mask` read."""
    from PIL import Image

    picture, mask = folder / "in.png", folder / "mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)).save(picture)
    pixels = np.zeros((8, 8), np.uint8)
    pixels[:, :keep_columns] = 255
    Image.fromarray(pixels).save(mask)
    return str(picture), str(mask)


def kill_train_steps_after(monkeypatch, n_steps: int):
    """Every train step after the first `n_steps` (counted over every step function the trainer
    makes from now on: all rounds of a distillation together) raises KeyboardInterrupt."""
    import ddpm_jax.trainer as trainer_mod

    real, calls = trainer_mod.make_train_step, []

    def make(*args):
        step = real(*args)

        def killed(*a):
            if len(calls) == n_steps:
                raise KeyboardInterrupt("simulated kill")
            calls.append(1)
            return step(*a)

        return killed

    monkeypatch.setattr(trainer_mod, "make_train_step", make)


def diffusers_dpm_solver(steps: int, *, clip=True, sde=False, prediction_type="epsilon"):
    """diffusers' DPMSolverMultistepScheduler set up as our dpmpp_2m / dpmpp_2m_sde run
    (the release's linear schedule, 1000 steps, linspace spacing), over `steps` steps."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=2,
        algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
        thresholding=clip,
        sample_max_value=1.0,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(steps)
    return sched
