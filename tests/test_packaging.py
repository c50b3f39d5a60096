"""Layout and packaging: heads/ and stages/ install as tpo.heads / tpo.stages."""

import os
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


def test_launcher_rank_flag_before_the_subcommand_is_accepted():
    from tpo.cli import _rank_after_command

    assert _rank_after_command(["--local_rank=1", "train", "--stage", "2"]) == [
        "train",
        "--local_rank=1",
        "--stage",
        "2",
    ]
    assert _rank_after_command(["--local_rank", "0", "train"]) == ["train", "--local_rank", "0"]
    assert _rank_after_command(["train", "--stage", "1"]) == ["train", "--stage", "1"]
    # the README's multi-node command, on 2 local processes: each rank parses its arguments
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", "29631"]
    out = subprocess.run(
        [*cmd, str(bin_dir / "tpo"), "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("usage: tpo train") == 2
