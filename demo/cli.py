"""`ddpm-jax demo`: serve the page (loopback unless told otherwise)."""

from __future__ import annotations

import logging
import signal
import threading

from ddpm_jax.cli.common import DEFAULT_MODEL, add_model

log = logging.getLogger(__name__)


def add_arguments(p):
    from .uploads import CLIENT_UPLOAD_MB, TOTAL_UPLOAD_MB, WINDOW_S

    window = f"{WINDOW_S / 60:g} minutes"
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
        "--max-upload-mb", type=float, default=10, help="largest file accepted, in MB (default: %(default)s)"
    )
    p.add_argument(
        "--max-client-upload-mb",
        type=float,
        default=CLIENT_UPLOAD_MB,
        help=f"what one client (one IP address) may upload, all files together, in {window} (as long as the "
        "server keeps an upload); more is refused (default: %(default)s)",
    )
    p.add_argument(
        "--max-total-upload-mb",
        type=float,
        default=TOTAL_UPLOAD_MB,
        help=f"what all clients together may upload in {window}: the most disk uploads take (default: %(default)s)",
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


def _load(models, choice, serving: threading.Event):
    """Load the default model while Gradio imports and starts, then, once the page is served,
    compile the chain a new page starts on (`page_chain`). Compiling a cifar10-size UNet keeps
    both cores of a small machine busy: during Gradio's start-up check of its own page (one HEAD
    request, 3 s timeout) it made that check fail and the server exit."""
    from .models import ModelUnavailable, page_chain

    try:
        model = models.get(choice)
        serving.wait()
        models.warm_chain(page_chain(model))
    except ModelUnavailable as err:
        log.error("%s; the page starts anyway and says so", err)


def run(args) -> int:
    from ddpm_jax.compile_cache import enable_compilation_cache

    if not 0 < args.max_upload_mb <= 1024 or not 1 <= args.queue_size <= 10_000:
        raise ValueError(
            f"--max-upload-mb must be in (0, 1024] and --queue-size in [1, 10000]; got "
            f"{args.max_upload_mb} and {args.queue_size}"
        )
    for flag, mb in (
        ("--max-client-upload-mb", args.max_client_upload_mb),
        ("--max-total-upload-mb", args.max_total_upload_mb),
    ):
        if not args.max_upload_mb <= mb <= 10**6:
            raise ValueError(
                f"{flag} must be at least --max-upload-mb ({args.max_upload_mb}) and at most 1000000; got {mb}"
            )

    enable_compilation_cache(args.cache_dir)

    from .models import Models

    models = Models(chunk_size=args.chunk_size)
    default = [models.add(m) for m in args.model or [DEFAULT_MODEL]][0]
    # Load while gradio imports and starts, compile once it serves; the first page load waits for it.
    serving = threading.Event()
    threading.Thread(target=_load, args=(models, default, serving), name="warm-up", daemon=True).start()

    from .app import build_app, launch

    end_on_sigterm()
    app = build_app(models, default, queue_size=args.queue_size)
    launch(
        app,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        client_upload_mb=args.max_client_upload_mb,
        total_upload_mb=args.max_total_upload_mb,
        prevent_thread_lock=True,
    )
    serving.set()
    app.block_thread()
    return 0


def end_on_sigterm():
    """Make SIGTERM (kill, systemd, docker stop) end the server as Ctrl-C does: Gradio's
    launch returns and the same cleanup runs (the download folder at exit, Gradio's cache)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
