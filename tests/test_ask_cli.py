"""`tpo ask` from the shell: JSON output, pictures with --out, exit code 2 on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_infer_api import make_checkpoint
from tpo.cli import main
from tpo.infer.answer import GroundedAnswer, MaskTrack

TPO = str(Path(sys.executable).with_name("tpo"))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    from tpo.data.toyworld import generate_toyworld

    root = tmp_path_factory.mktemp("askworld")
    generate_toyworld(root, 1, seed=1, workers=1)
    return str(root / "videos" / "toy_00000.mp4")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("askckpt") / "final")


def test_shell_json_and_pictures(video, ckpt, tmp_path):
    out = tmp_path / "pics"
    proc = subprocess.run(
        [TPO, "ask", video, "When does the red circle appear?", "--checkpoint", str(ckpt),
         "--json", "--out", str(out), "--max-new-tokens", "6"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ans = GroundedAnswer.from_json(json.loads(proc.stdout))
    assert isinstance(ans.text, str) and ans.video == video and ans.duration > 0
    for name in ("timeline.png", "frames.png"):
        assert (out / name).stat().st_size > 1000
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_output_and_overlay_with_masks(video, ckpt, tmp_path, capsys):
    import tpo
    from tpo.infer.cli import format_answer, write_pictures

    assert main(["ask", video, "Where is it?", "--checkpoint", str(ckpt),
                 "--max-new-tokens", "4"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("answer: ")
    pipe = tpo.load(ckpt)
    inp = pipe.load_input(video)
    h, w = inp.size
    masks = np.zeros((len(inp.indices), h, w), bool)
    masks[:, 10:30, 20:50] = True
    ans = GroundedAnswer(
        "the circle",
        ["mask"],
        masks=MaskTrack(masks, inp.indices, inp.fps),
        video=video,
        duration=inp.duration,
        fps=inp.fps,
    )
    written = write_pictures(pipe, video, ans, tmp_path / "m")
    assert [p.name for p in written] == ["timeline.png", "frames.png", "overlay.mp4"]
    assert all(p.stat().st_size > 0 for p in written)
    assert f"masks: {len(inp.indices)} frames" in format_answer(ans)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["missing.mp4", "What?"], "missing.mp4"),
        (["VIDEO", "  "], "non-empty"),
        (["VIDEO", "What?", "--checkpoint", "NOTCKPT"], "not a tpo checkpoint"),
    ],
)
def test_bad_input_exits_2(argv, needle, video, tmp_path, capsys):
    argv = [a.replace("VIDEO", video).replace("NOTCKPT", str(tmp_path)) for a in argv]
    if argv[0] == "missing.mp4":
        argv[0] = str(tmp_path / "missing.mp4")
    assert main(["ask", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tpo ask: error:") and needle in err


def test_ensemble_flag_records_k_scores(video, ckpt, capsys):
    argv = ["ask", video, "Track the red circle.", "--checkpoint", str(ckpt),
            "--max-new-tokens", "4", "--ensemble", "2", "--seed", "0", "--json"]  # fmt: skip
    assert main(argv) == 0
    ans = GroundedAnswer.from_json(json.loads(capsys.readouterr().out))
    assert ans.ensemble is not None and ans.ensemble.k == 2 and len(ans.ensemble.scores) == 2
    assert main(argv) == 0  # same seed, same answer
    again = GroundedAnswer.from_json(json.loads(capsys.readouterr().out))
    assert again.ensemble.scores == ans.ensemble.scores and again.text == ans.text
    assert main(argv[:-5] + ["--ensemble", "0"]) == 2
