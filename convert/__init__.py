"""PyTorch checkpoints (the port's state_dicts, diffusers' UNet2DModel) onto Flax params."""
