"""Success statistics with confidence intervals, and batched policy rollouts."""
