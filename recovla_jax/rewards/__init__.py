"""Reward components (named, documented, pure JAX) and the mask compiler."""
