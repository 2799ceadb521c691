"""Rollouts: groups of sampled videos with their trajectories and log-probs, and their on-disk store."""
