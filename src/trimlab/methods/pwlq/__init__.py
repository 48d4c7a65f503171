"""Piecewise-linear post-training quantization (Fang et al. 2020) and its uniform baseline."""
