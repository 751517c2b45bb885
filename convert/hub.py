"""Hugging Face Hub ids: a repo's model files in huggingface_hub's cache, fetched unless offline."""

from __future__ import annotations

from pathlib import Path

from ddpm_jax.download import DownloadError, hub_answers, offline

from .diffusers_format import WEIGHT_FILES
from .safe_load import TORCH_SUFFIXES


def looks_like_hub_id(name: str) -> bool:
    """owner/name, and not a mistyped path (./x, ~/x, x/model.ckpt)."""
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and not name.endswith((".safetensors", *TORCH_SUFFIXES))
    )


def hub_folder(repo_id: str) -> Path:
    """The folder holding the repo's config.json and weights (the repo root or its unet/),
    fetched into the huggingface_hub cache unless offline (`HF_HUB_OFFLINE`, `DDPM_JAX_OFFLINE`)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    # An endpoint that accepts and never answers would hold huggingface_hub for
    # minutes (its retries): ask once, briefly, and fall back to the cache.
    if offline():
        local_only, why = True, "downloads are off (HF_HUB_OFFLINE or DDPM_JAX_OFFLINE)"
    else:
        local_only = not hub_answers()
        why = "the Hub did not answer" if local_only else "the Hub is unreachable"
    not_cached = []

    def first(candidates):
        """The first (subfolder, filename) that is in the repo (or, offline, in the cache)."""
        for subfolder, filename in candidates:
            try:
                path = hf_hub_download(repo_id, filename, subfolder=subfolder, local_files_only=local_only)
                return Path(path)
            except LocalEntryNotFoundError:
                not_cached.append(filename)
            except EntryNotFoundError:
                pass
            except OSError as err:  # unknown repo, auth, HTTP errors
                raise DownloadError(f"could not fetch {repo_id} from the Hub ({err})") from err
        if not_cached:
            raise DownloadError(
                f"{repo_id} is not in the Hugging Face cache and {why}: run `hf download {repo_id}` "
                "while online (it fills the same cache), or pass a local diffusers model folder"
            )
        return None

    config = first([(None, "config.json"), ("unet", "config.json")])
    if config is None:
        raise ValueError(f"Hub repo {repo_id} has no config.json (nor unet/config.json): not a UNet2DModel")
    sub = None if config.parent.name != "unet" else "unet"
    first([(sub, name) for name in WEIGHT_FILES])
    not_cached.clear()
    try:
        first([(sub, "scheduler_config.json"), ("scheduler", "scheduler_config.json")])
    except DownloadError:
        pass  # optional: load_diffusers falls back to the scheduler's defaults
    return config.parent
