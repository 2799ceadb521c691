import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
VPT = str(Path(sys.executable).with_name("vpt"))


def test_two_processes_score_every_video_exactly_once_in_input_order(toy_manifest, tmp_path):
    out = tmp_path / "scores.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", VPT, "score", "-q", "-m", "brightness,motion", str(toy_manifest),
         "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    table = pq.read_table(out)
    plain = subprocess.run([VPT, "score", "-q", "-m", "brightness,motion", str(toy_manifest)], capture_output=True,
                           env=env, check=True).stdout
    import io

    single = pq.read_table(io.BytesIO(plain))
    assert table.column("id").to_pylist() == pq.read_table(toy_manifest).column("id").to_pylist()
    assert table.to_pylist() == single.to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]  # the parts are gone
