"""ddpm_jax: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in JAX/Flax."""

from . import cpu_flags

cpu_flags.use_cpu_flags_at_import()  # before anything below can start JAX's backend

from .config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig, UNetConfig  # noqa: E402
from .pipeline import Diffusion, Step  # noqa: E402
from .samplers import Sampler  # noqa: E402

__all__ = ["Diffusion", "Step", "Sampler", "DiffusionConfig", "UNetConfig", "DIFFUSION_PRESETS", "UNET_PRESETS"]
__version__ = "0.1.0"
