"""JAX's persistent compilation cache, so a second process skips compiling."""

from __future__ import annotations

from pathlib import Path


def enable_compilation_cache(path=None) -> Path:
    """Keep every compiled program under `path` (default: <ddpm_jax cache>/jax_compilation_cache)."""
    import jax

    from .download import cache_dir

    path = Path(path) if path is not None else cache_dir() / "jax_compilation_cache"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
