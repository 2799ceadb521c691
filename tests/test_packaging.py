import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_commands_and_schemas_inside_vpt(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"vpt/commands/main.py", "vpt/commands/score.py", "vpt/schemas/__init__.py",
            "vpt/schemas/videos.json", "vpt/schemas/scores.json", "vpt/io/tables.py", "vpt/train/trainer.py",
            "vpt/algo/preference.py", "vpt/metrics/rewardbench.py"} <= names
    library = {f"vpt/{path.relative_to(ROOT / 'vpt').as_posix()}" for path in (ROOT / "vpt").rglob("*.py")}
    assert library <= names  # every subpackage is listed in pyproject.toml
    assert {f"vpt/commands/{path.name}" for path in (ROOT / "commands").glob("*.py")} <= names
    assert {f"vpt/schemas/{path.name}" for path in (ROOT / "schemas").glob("*.json")} <= names
    assert not any(name.startswith(("commands/", "schemas/", "tests/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vpt = vpt.commands.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
