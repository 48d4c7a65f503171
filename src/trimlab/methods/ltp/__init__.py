"""Learned token pruning (Kim et al. 2021): per-layer thresholds on the attention each token receives."""
