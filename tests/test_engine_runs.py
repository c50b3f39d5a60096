"""The stage engine across runs in one output folder: continuing, restarting, resuming counts,
logs and seeds (toy model, one process)."""

import json
import logging

import pytest
import torch

from tests.helpers.toy_engine import builders, toy_config
from tpo.stages import get_stage
from tpo.train.checkpoint import latest_checkpoint
from tpo.train.engine import StageRunner
from tpo.train.logger import RunLogger, read_metrics


def _run(out, max_steps, save_every=0, resume=False, **kw):
    cfg = toy_config(str(out), 1, max_steps, save_every)
    for key, value in kw.items():
        setattr(cfg.train, key, value)
    runner = StageRunner(cfg, get_stage(1), *builders(bad_on_rank=0, load_skips=3))
    runner.run(resume=resume)
    return runner


def _state(folder):
    return json.loads((folder / "state.json").read_text())


def test_resume_counts_bad_samples_as_an_uninterrupted_run(tmp_path):
    _run(tmp_path / "whole", 6, save_every=2)
    _run(tmp_path / "cut", 4, save_every=2)  # stops at step 4, as if killed after its save
    _run(tmp_path / "cut", 6, save_every=2, resume=True)
    # 3 skipped at load (counted once) + one per micro-batch (6 steps x 2) on rank 0
    whole = _state(tmp_path / "whole" / "final")["bad_samples"]
    assert whole == {"toy: at load": 3, "toy: skipped": 12}
    assert _state(tmp_path / "cut" / "final")["bad_samples"] == whole
    rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["bad_samples"] == 15


def test_a_longer_rerun_continues_from_final(tmp_path):
    _run(tmp_path, 4, save_every=1)  # keeps step 2 and 3 besides final (step 4)
    assert latest_checkpoint(tmp_path) == tmp_path / "final"
    runner = _run(tmp_path, 6, save_every=1, resume=True)
    assert runner.start_step == 4
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 7))


def test_a_fresh_run_clears_an_earlier_runs_checkpoints(tmp_path, caplog):
    _run(tmp_path, 6, save_every=2)
    assert (tmp_path / "checkpoints" / "step_000004").is_dir()
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, 2, save_every=0, lr=0.02)
    assert "holds an earlier run: removing its checkpoints, final" in caplog.text
    assert not (tmp_path / "checkpoints").exists()  # nothing a --resume could pick up
    assert _state(tmp_path / "final")["step"] == 2
    with pytest.raises(ValueError, match="inside train.output_dir"):
        _run(tmp_path, 2, init_from=str(tmp_path / "final"))
    assert (tmp_path / "final").is_dir()  # refused before removing anything


def test_each_rank_trains_with_its_own_seed_after_the_build(tmp_path):
    runner = StageRunner(toy_config(str(tmp_path), 1, 1), get_stage(1), *builders())
    runner.cfg.train.seed = 11
    runner.setup()
    # the model builder seeds its own init; training randomness follows train.seed + rank
    assert torch.initial_seed() == 11 + runner.dist.rank


def test_logger_drops_what_an_earlier_run_logged_past_the_start(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = RunLogger(tmp_path)
    for step in range(1, 5):
        first.log(step, {"loss": 1.0})
    first._tb.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # killed while writing
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    second = RunLogger(tmp_path, start_step=2)
    for step in (3, 4):
        second.log(step, {"loss": 2.0})
    second._tb.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    assert got == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON metrics row"):
        read_metrics(tmp_path / "bad.jsonl")
