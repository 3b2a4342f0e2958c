"""ONNX export of a run's policies (base + residual recovery policies) with parity checks and a manifest.

This side uses JAX (it reads checkpoints and computes the references); the consumer side,
`recovla_jax.runtime`, does not.
"""
