"""The no-compression method: the dense model is the result, so every table has its baseline row."""
