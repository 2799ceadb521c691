"""Print the per-iteration reward statistics of a GRPO run: python curve.py OUT/policy-*/metrics.parquet"""

import sys

import pyarrow.parquet as pq

for path in sys.argv[1:]:
    rows = pq.read_table(path).to_pylist()
    figures = {row["name"]: row["value"] for row in rows if row["step"] is None}
    iteration = rows[0]["iteration"] if rows else "?"
    shown = [f"{name} {value:.4f}" for name, value in figures.items() if name.startswith("reward/")]
    print(f"iteration {iteration:>4}  " + "  ".join(shown))
