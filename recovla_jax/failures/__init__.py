"""Perturbation injection and the failure bank (collect, label, filter, split, save, load)."""
