"""The stage engine on a toy model: named groups only, exact resume after kill -9, 2 processes."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.toy_engine import ToyBatch, ToyModel, builders, toy_config, zero3_all_sharded
from tpo.stages import get_stage
from tpo.train.checkpoint import load_trained_weights
from tpo.train.distributed import in_fixed_order
from tpo.train.engine import StageRunner
from tpo.train.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions"),
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
}


def _script(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.helpers.toy_engine", *map(str, args)]


def _launch(port: int, *args) -> subprocess.CompletedProcess:
    """The toy script on 2 ranks through the `deepspeed` launcher (asserts it succeeded)."""
    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", str(port), "--module"]
    cmd += ["tests.helpers.toy_engine", *map(str, args)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_stage_trains_exactly_its_groups(tmp_path):
    cfg = toy_config(str(tmp_path / "s1"), 1, 5)
    runner = StageRunner(cfg, get_stage(1), *builders())
    torch.manual_seed(0)  # the builder's seed: the same init as the runner's model
    before = {k: v.clone() for k, v in ToyModel().state_dict().items()}
    runner.run()
    after = runner.model.state_dict()
    # stage 1 trains lora (a) and task_tokens (b); base and the head (c) stay bit-identical
    for name in ("base.weight", "base.bias", "c.weight", "c.bias"):  # noqa: B007
        assert torch.equal(before[name], after[name]), name
    for name in ("a.weight", "b.weight"):
        assert not torch.equal(before[name], after[name]), name
    rows = read_metrics(tmp_path / "s1" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert (tmp_path / "s1" / "loss_curves.png").stat().st_size > 1000
    state = json.loads((tmp_path / "s1" / "final" / "state.json").read_text())
    assert state["trained_groups"] == ["lora", "task_tokens"] and state["step"] == 5

    # stage 2 starts from stage 1's final checkpoint and keeps its trained groups in its own
    cfg2 = toy_config(str(tmp_path / "s2"), 2, 3)
    cfg2.train.init_from = str(tmp_path / "s1" / "final")
    r2 = StageRunner(cfg2, get_stage(2), *builders())
    r2.run()
    state2 = json.loads((tmp_path / "s2" / "final" / "state.json").read_text())
    assert set(state2["trained_groups"]) == {
        "lora",
        "task_tokens",
        "temporal_head",
        "connector_proj",
    }
    assert torch.equal(r2.model.a.weight, after["a.weight"])  # lora frozen in stage 2
    torch.manual_seed(0)
    fresh = ToyModel()
    load_trained_weights(fresh, tmp_path / "s2" / "final")
    assert torch.equal(fresh.c.weight, r2.model.c.weight)
    torch.manual_seed(1)  # another base init is refused: the checkpoint does not store it
    with pytest.raises(ValueError, match="base parameters differ"):
        load_trained_weights(ToyModel(), tmp_path / "s2" / "final")


def test_missing_previous_stage_names_the_command(tmp_path):
    cfg = toy_config(str(tmp_path / "stage2"), 2, 2)
    runner = StageRunner(cfg, get_stage(2), *builders())
    with pytest.raises(FileNotFoundError, match="make stage1"):
        from tpo.train.engine import resolve_init

        resolve_init(cfg, get_stage(2))
    assert runner.out.name == "stage2"


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_losses(tmp_path):
    full, cut, s1 = tmp_path / "full", tmp_path / "cut", tmp_path / "stage1"
    subprocess.run(_script(s1, 1, 2, 0), env=ENV, check=True, capture_output=True, cwd=ROOT)
    init = ("--init", s1 / "final")
    subprocess.run(
        _script(full, 2, 10, 0, *init), env=ENV, check=True, capture_output=True, cwd=ROOT
    )
    # the second run checkpoints every 3 steps and is killed (SIGKILL) after its step-6 save
    proc = subprocess.Popen(
        _script(cut, 2, 10, 3, "--sleep", "0.15", *init),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step_000006" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before step 6"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = read_metrics(cut / "metrics.jsonl")
    assert max(r["step"] for r in done) < 10
    subprocess.run(
        _script(cut, 2, 10, 3, "--resume", *init),
        env=ENV,
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    a = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(cut / "metrics.jsonl")]
    assert len(a) == len(b) == 10
    assert a == pytest.approx(b, rel=1e-6, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_two_processes_on_loopback_stay_in_sync(tmp_path, zero):
    extra = ["--deepspeed", zero3_all_sharded(tmp_path)] if zero == 3 else []
    out = _launch(29611 + zero, tmp_path / "dp", 1, 4, 0, *extra)
    # the ranks print at the same moment, so their lines may run together
    sums = dict(re.findall(r"(RANK\d) CHECKSUM ([-+0-9.e]+)", out.stdout))
    assert set(sums) == {"RANK0", "RANK1"}, out.stdout[-2000:]
    assert sums["RANK0"] == sums["RANK1"]
    state = json.loads((tmp_path / "dp" / "final" / "state.json").read_text())
    assert state["world_size"] == 2
    torch.manual_seed(0)
    fresh = ToyModel()
    load_trained_weights(fresh, tmp_path / "dp" / "final")  # whole tensors from both ranks
    total = sum(float(p.detach().double().sum()) for p in (fresh.a.weight, fresh.a.bias))
    total += sum(float(p.detach().double().sum()) for p in (fresh.b.weight, fresh.b.bias))
    assert float(sums["RANK0"]) == pytest.approx(total, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("port", "zero", "ds_file"),
    [(29622, 1, "zero2"), (29623, 2, "zero2"), (29624, 2, "zero2_offload")],
)
def test_two_ranks_routing_different_heads_match_one_rank(tmp_path, port, zero, ds_file):
    """Rank 0's samples all go to one head and rank 1's to the other, so the ranks' graphs differ;
    the update must still be the one a single rank makes on the union of their micro-batches
    (DeepSpeed ZeRO-1/2 mixed parameters' gradients up here before `in_fixed_order`). The logged
    loss is the global batch's, and rank 1's skipped samples are counted."""
    ds = json.loads((ROOT / "configs" / "deepspeed" / f"{ds_file}.json").read_text())
    ds["zero_optimization"]["stage"] = zero
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    s1 = tmp_path / "stage1"
    subprocess.run(
        _script(s1, 1, 1, 0, "--routed"), env=ENV, check=True, capture_output=True, cwd=ROOT
    )
    common = ["2", "3", "0", "--routed", "--init", s1 / "final"]
    common += ["--deepspeed", tmp_path / "ds.json"]
    _launch(port, tmp_path / "two", *common, "--bad_on_rank", "1")
    one = subprocess.run(
        _script(tmp_path / "one", *common, "--micro_batch", "8"),
        env=ENV,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    def trained(*runs: str) -> ToyModel:
        torch.manual_seed(0)  # the engine's builder seeds the same way
        model = ToyModel(routed=True)
        for run in runs:
            load_trained_weights(model, tmp_path / run / "final")
        return model

    init = trained("stage1")
    two, single = trained("stage1", "two"), trained("stage1", "one")
    moved = 0.0
    for (name, a), b, c in zip(two.named_parameters(), single.parameters(), init.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6, msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, float((b - c).abs().max()))
    assert moved > 1e-3  # the heads did train
    logged = {run: read_metrics(tmp_path / run / "metrics.jsonl") for run in ("two", "one")}
    assert [r["loss"] for r in logged["two"]] == pytest.approx(
        [r["loss"] for r in logged["one"]], rel=1e-6
    )
    # rank 1 skipped one sample per micro-batch: 3 steps x 2 micro-batches
    assert logged["two"][-1]["bad_samples"] == 6
    state = json.loads((tmp_path / "two" / "final" / "state.json").read_text())
    assert state["bad_samples"] == {"toy: skipped": 6}


def test_zero3_saves_whole_weights_and_resumes_exactly(tmp_path):
    zero3 = zero3_all_sharded(tmp_path)

    def config(out):
        cfg = toy_config(str(tmp_path / out), 1, 4, save_every=2)
        cfg.train.deepspeed = str(zero3)
        return cfg

    runner = StageRunner(config("full"), get_stage(1), *builders())
    runner.run()
    live = dict(runner.model.named_parameters())
    assert all(p.numel() == 0 for p in live.values())  # partitioned: each rank holds a shard
    torch.manual_seed(0)
    init = ToyModel().state_dict()
    torch.manual_seed(0)
    fresh = ToyModel()
    load_trained_weights(fresh, tmp_path / "full" / "final")  # whole tensors, base fingerprint ok
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(live.values())):
        for name, p in fresh.named_parameters():
            assert torch.equal(p, live[name]), name
    for name in ("a.weight", "b.weight"):
        assert not torch.equal(fresh.state_dict()[name], init[name]), name
    assert torch.equal(fresh.base.weight, init["base.weight"])

    # resuming the step-2 checkpoint gives the same losses and the same final weights
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "final")
    StageRunner(config("cut"), get_stage(1), *builders()).run(resume=True)
    a = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert len(a) == len(b) == 4 and a == pytest.approx(b, rel=1e-6, abs=1e-9)
    torch.manual_seed(0)
    resumed = ToyModel()
    load_trained_weights(resumed, tmp_path / "cut" / "final")
    for name, p in resumed.named_parameters():
        assert torch.equal(p, fresh.state_dict()[name]), name


@pytest.mark.slow
def test_cpu_offload_takes_the_same_steps(tmp_path):
    """Offloading moves the optimizer (DeepSpeed's CPU AdamW), not what a step computes."""
    losses, weights = {}, {}
    for name in ("zero2.json", "zero2_offload.json", "zero3_offload.json"):
        cfg = toy_config(str(tmp_path / name), 1, 4)
        cfg.train.deepspeed = str(ROOT / "configs" / "deepspeed" / name)
        StageRunner(cfg, get_stage(1), *builders()).run()
        losses[name] = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]
        torch.manual_seed(0)
        model = ToyModel()
        load_trained_weights(model, tmp_path / name / "final")
        weights[name] = torch.cat([model.a.weight.flatten(), model.b.weight.flatten()])
    assert len(losses["zero2.json"]) == 4
    for name in ("zero2_offload.json", "zero3_offload.json"):
        assert losses[name] == pytest.approx(losses["zero2.json"], rel=1e-5), name
        assert torch.allclose(weights[name], weights["zero2.json"], atol=1e-6), name
    torch.manual_seed(0)
    init = ToyModel()
    start = torch.cat([init.a.weight.flatten(), init.b.weight.flatten()])
    assert not torch.allclose(weights["zero2.json"], start, atol=1e-4)  # the steps did train


def test_zero3_on_several_ranks_refuses_stages_with_heads():
    from tpo.train.engine import check_zero3_routing

    check_zero3_routing(get_stage(1), 2, "z3.json")  # LM only: every rank runs the same modules
    check_zero3_routing(get_stage(2), 1, "z3.json")  # one rank: nothing to fall out of step
    for n in (2, 3):
        with pytest.raises(ValueError, match=r"z3.json: ZeRO-3 on 2 ranks cannot train stage"):
            check_zero3_routing(get_stage(n), 2, "z3.json")


def test_resume_on_another_number_of_ranks_names_the_ways_out(tmp_path):
    """A checkpoint that 2 ranks wrote cannot continue on 1 (DeepSpeed partitions the optimizer
    state by rank); the error names both counts and how to go on, before any model is built."""
    StageRunner(toy_config(str(tmp_path / "run"), 1, 3, 2), get_stage(1), *builders()).run()
    step = tmp_path / "run" / "final"  # the checkpoint with the most steps
    state = json.loads((step / "state.json").read_text())
    (step / "state.json").write_text(json.dumps({**state, "world_size": 2}))

    def never(cfg, stage):
        raise AssertionError("the model was built before the check")

    runner = StageRunner(toy_config(str(tmp_path / "run"), 1, 4, 2), get_stage(1), never, None)
    with pytest.raises(ValueError, match=r"written by 2 rank\(s\), but this run has 1") as err:
        runner.run(resume=True)
    assert f"train.init_from={step}" in str(err.value)


def test_in_fixed_order_readies_gradients_in_one_order_whatever_the_graph():
    """Two micro-batches that route to different heads finish the parameters' gradients in
    different orders; through `in_fixed_order` both finish them in one order, with the same
    loss value and the same gradients as a plain backward."""
    torch.manual_seed(0)
    model = ToyModel(routed=True)
    params = [p for p in model.parameters()]
    x, y = torch.randn(4, 4), torch.randn(4, 1)

    def order_and_grads(task: int, fixed: bool) -> tuple[list[int], list[torch.Tensor], float]:
        model.zero_grad()
        seen: list[int] = []
        hooks = [
            p.register_post_accumulate_grad_hook(lambda _p, k=k: seen.append(k))
            for k, p in enumerate(params)
        ]
        batch = ToyBatch(x, y, torch.full((4,), task))
        loss = model(batch)["loss"]
        value = float(loss)
        if fixed:
            loss = in_fixed_order(loss, params)
            assert float(loss) == value
        loss.backward()
        for h in hooks:
            h.remove()
        return seen, [p.grad.clone() for p in params], value

    plain = [order_and_grads(task, fixed=False) for task in (0, 1)]
    fixed = [order_and_grads(task, fixed=True) for task in (0, 1)]
    assert plain[0][0] != plain[1][0]  # the hazard: the order follows the graph
    assert fixed[0][0] == fixed[1][0]
    assert sorted(fixed[0][0]) == list(range(len(params)))  # each parameter exactly once
    for (_, g_plain, v_plain), (_, g_fixed, v_fixed) in zip(plain, fixed):
        assert v_plain == v_fixed
        for a, b in zip(g_plain, g_fixed):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
