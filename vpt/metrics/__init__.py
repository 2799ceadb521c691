"""Evaluation arithmetic: reward-bench accuracy, GSB, optical-flow errors, win rates."""
