"""Methods composed under one budget: e.g. Fisher pruning, then LTP, then PWLQ."""
