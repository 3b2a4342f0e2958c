"""Small shared helpers: JAX set-up, hashing, paths."""
