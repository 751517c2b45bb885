"""`ddpm-jax demo`: serve the page (loopback unless told otherwise)."""

from __future__ import annotations

import logging
import threading

from ddpm_jax.cli.common import DEFAULT_MODEL, add_model

log = logging.getLogger(__name__)


def add_arguments(p):
    add_model(
        p,
        "the model shown first: a name (digits, cifar10, lsun_church, ...) or a .safetensors path; "
        f"repeat to offer more paths (default: {DEFAULT_MODEL}, bundled, works offline)",
        repeat=True,
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 serves your network)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument(
        "--chunk-size", type=int, default=10, help="steps per compiled chunk: Stop and page updates land between chunks"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=10, help="largest upload accepted, in MB (default: %(default)s)"
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=64,
        help="requests that may wait in the queue; more are refused (default: %(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="JAX's persistent compilation cache (default: <ddpm_jax cache>/jax_compilation_cache)",
    )


def _load(models, choice):
    from .models import ModelUnavailable

    try:
        models.get(choice)
    except ModelUnavailable as err:
        log.error("%s; the page starts anyway and says so", err)


def run(args) -> int:
    from ddpm_jax.compile_cache import enable_compilation_cache

    if not 0 < args.max_upload_mb <= 1024 or not 1 <= args.queue_size <= 10_000:
        raise ValueError(
            f"--max-upload-mb must be in (0, 1024] and --queue-size in [1, 10000]; got "
            f"{args.max_upload_mb} and {args.queue_size}"
        )

    enable_compilation_cache(args.cache_dir)

    from .models import Models

    models = Models(chunk_size=args.chunk_size)
    default = [models.add(m) for m in args.model or [DEFAULT_MODEL]][0]
    # Load and compile while gradio imports and starts; the first page load waits for it.
    threading.Thread(target=_load, args=(models, default), name="warm-up", daemon=True).start()

    from .app import build_app, launch

    launch(
        build_app(models, default, queue_size=args.queue_size),
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
    )
    return 0
