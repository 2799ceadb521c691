"""``vpt report``: one static HTML page of a post-training run: videos side by side across stages with their scores,
metric curves, win-rate / GSB / reward-bench tables, reward-hacking flags and lineage."""
