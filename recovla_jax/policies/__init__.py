"""Flax networks, the frozen base-policy interface, and the behaviour-cloning trainer."""
