"""Layout and packaging: heads/ and stages/ install as tpo.heads / tpo.stages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_heads_and_stages_map_to_top_level_folders():
    import tpo.heads
    import tpo.stages

    assert Path(tpo.heads.__file__).resolve().parent == ROOT / "heads"
    assert Path(tpo.stages.__file__).resolve().parent == ROOT / "stages"


def test_import_tpo_has_no_side_effects():
    code = (
        "import sys; import tpo; "
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'sam2') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


def test_bare_heads_import_is_banned_by_ruff(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import heads\n")
    ruff = Path(sys.executable).parent / "ruff"
    res = subprocess.run(
        [
            str(ruff),
            "check",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--select",
            "TID251",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert "TID251" in res.stdout


def test_console_script_lists_subcommands():
    tpo_bin = Path(sys.executable).parent / "tpo"
    out = subprocess.run([str(tpo_bin), "--help"], capture_output=True, text=True, check=True)
    assert "toyworld" in out.stdout
