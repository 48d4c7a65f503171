"""Fisher post-training pruning of heads and FFN neurons (Kwon et al. 2022)."""
