"""ddpm_jax: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in JAX/Flax."""

from .config import DIFFUSION_PRESETS, UNET_PRESETS, DiffusionConfig, UNetConfig
from .pipeline import Diffusion, Step
from .samplers import Sampler

__all__ = ["Diffusion", "Step", "Sampler", "DiffusionConfig", "UNetConfig", "DIFFUSION_PRESETS", "UNET_PRESETS"]
__version__ = "0.1.0"
