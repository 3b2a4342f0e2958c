"""recovla-jax: teach a frozen robot policy to recover from its own failures (ReCoVLA on MuJoCo MJX)."""

__version__ = "0.1.0"
