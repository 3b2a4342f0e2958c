"""Failure diagnosis: the RecoveryDescriptor schema and the selectors that produce it."""
