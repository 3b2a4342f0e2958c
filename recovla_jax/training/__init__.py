"""Residual-policy training: our own PPO (brax's trainer does not run on jax 0.10) and toy envs to test it."""
