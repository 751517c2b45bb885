"""The Gradio page for watching diffusion step by step."""
