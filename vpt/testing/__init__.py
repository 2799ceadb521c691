"""Helpers for tests and benchmarks (one-process GRPO loop, sampling evaluations of a policy); no command uses them."""
