"""POPEN's objective on the tiny model: frozen reference, L_t = DPO on the edited tokens by hand,
L_s pulls the `<tracking>` state toward the winner, engine run, exact resume, and no change when
popen is off. The segmentation set is a small stand-in collection folder (random embeddings in
the documented format), so the tests need no SAM2 mask head.
"""

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers.toy_manifest import toy_manifest

from tpo.config import ConfigError, TPOConfig, load_config
from tpo.popen.data import PopenBatch
from tpo.popen.objective import PopenObjective
from tpo.popen.reference import ReferencePolicy
from tpo.stages import get_stage
from tpo.train.distributed import DistInfo
from tpo.train.groups import select_trainable

ROOT = Path(__file__).resolve().parents[1]
STAGE3 = get_stage(3)
CPU = DistInfo(0, 1, 0, "cpu")
TEXTUAL = [  # (video index, instruction, y, y_c): y and y_c differ in one token
    (0, "What colour is the shape that moves up?", "Blue.", "Red."),
    (1, "Which direction does the blue triangle move?", "It moves down.", "It moves up."),
    (2, "How many shapes appear in the video?", "Three.", "One."),
]
N_RUNS = 6  # perturbed runs per stand-in seg sample: 2 high, 2 medium, 2 low


def _write_textual(path: Path, videos: Path) -> None:
    lines = [
        {"video": str(videos / f"toy_{v:05d}.mp4"), "instruction": q, "y": y, "y_c": yc}
        for v, q, y, yc in TEXTUAL
    ]
    lines.append({"video": str(videos / "toy_00000.mp4"), "y": "x", "y_c": "y"})  # malformed
    lines.append(
        {"video": str(videos / "toy_00000.mp4"), "instruction": "q", "y": "Same.", "y_c": "Same."}
    )  # no edit
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _write_seg(out: Path, records, num_frames: int, img_size: int, width: int) -> None:
    """A collection folder in the format of tpo.popen.seg_store (stand-in for `tpo popen
    collect`, which needs the SAM2 mask head)."""
    from safetensors.torch import save_file

    from tpo.data.dataset import VideoTaskDataset
    from tpo.popen.curriculum import rank_tiers
    from tpo.popen.seg_store import FORMAT, INDEX_FILE, TIER_CODES, sample_id

    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(7)
    axis = torch.randn(width, generator=gen)
    axis = axis / axis.norm()  # better masks lie further along one axis: a learnable preference
    entries = []
    masks = [r for r in records if r.task == "mask"][:3]
    for k, rec in enumerate([*masks, None, masks[0]]):
        sid = sample_id(rec) if rec is not None else "toy_mevis/not_in_manifest"
        n = N_RUNS if k < 4 else 1  # the last one has a single run: no pairs
        scores = torch.rand(n, generator=gen)
        frames = VideoTaskDataset(
            [masks[0] if rec is None else rec],
            num_frames=num_frames,
            img_size=img_size,
            sampling="middle",
            strict=True,
        ).build(0)
        tensors = {
            "embeddings": 2 * scores[:, None] * axis + 0.05 * torch.randn(n, width, generator=gen),
            "scores": scores,
            "tiers": torch.tensor([TIER_CODES[t] for t in rank_tiers(scores.tolist())]),
            "clean_embedding": torch.randn(width, generator=gen),
            "clean_score": torch.tensor(0.5),
            "frame_indices": torch.as_tensor(frames.indices, dtype=torch.int64),
            "mask_frame_indices": torch.as_tensor(frames.indices[:1], dtype=torch.int64),
        }
        name = f"s{k}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": FORMAT, "id": sid})
        entries.append({"id": sid, "file": name})
    (out / INDEX_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))


def _cfg(root: Path, *extra: str) -> TPOConfig:
    return load_config(
        TPOConfig,
        [ROOT / "configs" / "tiny" / "stage3.yaml"],
        [
            f"data.manifest={root / 'm3.yaml'}",
            "data.num_frames=4",
            "model.heads.temporal=null",
            "model.heads.mask=null",
            "train.micro_batch=2",
            "train.grad_accum=2",
            "train.extra_groups=[]",
            "train.bf16=false",
            "train.tensorboard=false",
            "train.save_every=0",
            f"train.output_dir={root / 'out'}",
            "popen.enabled=true",
            f"popen.textual={root / 'textual.jsonl'}",
            f"popen.segmentation={root / 'seg'}",
            "popen.curriculum_switch_step=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tpo.data.manifest import load_manifest, load_records
    from tpo.data.toyworld import generate_toyworld
    from tpo.popen.data import build_popen_data
    from tpo.train.builders import build_train_model

    root = tmp_path_factory.mktemp("popen")
    generate_toyworld(root / "world", 4, seed=5, workers=1)
    toy_manifest(f"{root}/world", 3, root / "m3.yaml")
    _write_textual(root / "textual.jsonl", root / "world" / "videos")
    cfg = _cfg(root)
    records, _ = load_records(load_manifest(cfg.data.manifest))
    _write_seg(root / "seg", records, 4, cfg.model.vision.img_size, 64)
    model = build_train_model(cfg, STAGE3)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh():
        model.load_state_dict(start)
        model.zero_grad(set_to_none=True)
        return model

    data = build_popen_data(cfg, STAGE3, CPU)
    return SimpleNamespace(root=root, cfg=cfg, fresh=fresh, data=data, records=records)


def _params(chosen: dict) -> list:
    return [p for ps in chosen.values() for p in ps]


@pytest.mark.parametrize(
    "mode, groups",
    [("copy", ("lora", "task_tokens", "connector")), ("disable_adapters", ("lora",))],
)
def test_reference_gets_no_gradient_and_stays_fixed(env, mode, groups):
    model = env.fresh()
    obj = PopenObjective(model, ReferencePolicy(mode), env.cfg.popen)
    chosen = select_trainable(obj, groups)
    pairs = next(env.data.iterate(0)).textual[0]
    frames, ids, mask = pairs.frames.repeat(2, 1, 1, 1, 1), pairs.input_ids, pairs.attention_mask
    obj.capture_reference()
    ref0 = obj.reference.logits(model.mllm, frames, ids, mask)
    with torch.no_grad():
        policy0 = model.mllm(frames, ids, mask, return_logits=True).logits
    assert torch.equal(ref0, policy0)  # the reference starts as the policy
    opt = torch.optim.Adam(_params(chosen), lr=1e-2)
    batch = next(env.data.iterate(0))
    policy, ref = obj.edited_logps(pairs)
    assert policy.requires_grad and not ref.requires_grad
    obj(dataclasses.replace(batch, base=None))["loss"].backward()  # the preference losses only
    # every trained parameter is in the graph (zero gradient where unused), as ZeRO needs
    assert all(p.grad is not None for p in _params(chosen))
    opt.step()
    buffers = list(obj.reference.buffers())
    assert all(not b.requires_grad and b.grad is None for b in buffers)
    if mode == "copy":  # one frozen tensor per trained MLLM parameter, none of them exposed
        trained = [p for p in model.mllm.parameters() if p.requires_grad]
        assert len(buffers) == len(trained)
        assert not any(name.startswith("reference") for name in obj.state_dict())
    assert not any(name.startswith("reference") for name, _ in obj.named_parameters())
    ref1 = obj.reference.logits(model.mllm, frames, ids, mask)
    with torch.no_grad():
        policy1 = model.mllm(frames, ids, mask, return_logits=True).logits
    assert torch.equal(ref0, ref1), "the reference moved"
    assert not torch.allclose(policy0, policy1), "the policy did not train"


def _hand_logps(mllm, pairs, edits: list[list[int]]) -> torch.Tensor:
    """Sum of log p over the edited answer tokens, one sequence at a time."""
    m, sums = len(pairs), []
    for r in range(2 * m):
        n = int(pairs.attention_mask[r].sum())
        ids = pairs.input_ids[r : r + 1, :n]
        start = int((pairs.labels[r] != -100).nonzero()[0])
        with torch.no_grad():
            logits = mllm(pairs.frames[r % m][None], ids, torch.ones_like(ids), return_logits=True)
        logp = F.log_softmax(logits.logits[0].double(), -1)
        sums.append(sum(float(logp[start + i - 1, ids[0, start + i]]) for i in edits[r]))
    return torch.tensor(sums, dtype=torch.float64)


def test_textual_loss_is_dpo_on_the_edited_tokens(env):
    model = env.fresh()
    obj = PopenObjective(model, ReferencePolicy("copy"), env.cfg.popen)
    chosen = select_trainable(obj, ("lora", "task_tokens"))
    obj.capture_reference()
    pairs = next(env.data.iterate(1)).textual[0]
    tok = model.mllm.tokenizer
    by_line = {
        int(s.rsplit(":", 1)[1]): TEXTUAL[int(s.rsplit(":", 1)[1]) - 1] for s in pairs.sources
    }
    edits_c, edits_r = [], []
    for s in pairs.sources:
        _, _, y, yc = by_line[int(s.rsplit(":", 1)[1])]
        ty, tyc = (tok(t, add_special_tokens=False)["input_ids"] for t in (y, yc))
        diff = [i for i, (a, b) in enumerate(zip(ty, tyc)) if a != b]
        assert len(ty) == len(tyc) and diff
        edits_c.append(diff)
        edits_r.append(diff)
    edits = edits_c + edits_r
    ref = _hand_logps(model.mllm, pairs, edits)
    with torch.no_grad():  # move the policy away from the reference
        for p in _params(chosen):
            p.add_(0.05 * torch.randn_like(p))
    policy = _hand_logps(model.mllm, pairs, edits)
    m, beta = len(pairs), env.cfg.popen.beta_t
    z = (policy[:m] - policy[m:]) - (ref[:m] - ref[m:])
    assert z.abs().max() > 1e-3
    out = obj.textual_loss([pairs])
    loss = float(out["loss"].detach())
    assert loss == pytest.approx(float(-F.logsigmoid(beta * z).mean()), abs=1e-5)
    reward = beta * (policy[:m] - ref[:m]).mean()
    assert float(out["chosen"]) == pytest.approx(float(reward), abs=1e-5)


def test_one_step_on_seg_loss_moves_the_embedding_toward_the_winner(env):
    model = env.fresh()
    obj = PopenObjective(model, ReferencePolicy("copy"), env.cfg.popen)
    chosen = select_trainable(obj, ("lora", "task_tokens", "connector"))
    seg = next(env.data.iterate(0)).seg[0]
    with torch.no_grad():
        h0 = obj.tracking_hidden(seg)[seg.rows].float()
    delta = torch.randn(h0.shape, generator=torch.Generator().manual_seed(1))
    delta = delta / delta.norm(dim=-1, keepdim=True)
    seg = dataclasses.replace(seg, h_w=h0 + delta, h_l=h0 - delta)
    out = obj.segmentation_loss([seg])
    assert float(out["loss"].detach()) == pytest.approx(math.log(2), abs=1e-4)  # margin 0
    out["loss"].backward()
    params = [p for p in _params(chosen) if p.grad is not None]
    g2 = sum(float(p.grad.pow(2).sum()) for p in params)
    assert g2 > 0
    # a small step: the loss should fall by about lr * |g|^2 = 0.1 to first order (beta_s is 10)
    torch.optim.SGD(params, lr=0.1 / g2).step()
    with torch.no_grad():
        h1 = obj.tracking_hidden(seg)[seg.rows].float()
    assert bool(((h1 - seg.h_w).norm(dim=-1) < (h0 - seg.h_w).norm(dim=-1)).all())
    assert bool(((h1 - seg.h_l).norm(dim=-1) > (h0 - seg.h_l).norm(dim=-1)).all())
    with torch.no_grad():
        assert float(obj.segmentation_loss([seg])["loss"]) < math.log(2)


def _save_init(model, folder: Path) -> dict:
    """A stage-3-like start checkpoint: LoRA moved away from its init (B != 0)."""
    from tpo.train import checkpoint as ckpt_io

    with torch.no_grad():
        for p in model.trainable_groups()["lora"]:
            p.add_(0.02 * torch.randn_like(p))
    tensors = ckpt_io.trained_state(model, ["lora"])
    folder.mkdir(parents=True)
    ckpt_io.save_weights(folder / ckpt_io.WEIGHTS, tensors)
    ckpt_io.write_json(
        folder / ckpt_io.STATE,
        {"trained_groups": ["lora"], "step": 0, "base_fingerprint": None},
    )
    return tensors


def test_engine_run_trains_the_stage_groups_and_the_preference_losses_fall(env):
    from safetensors.torch import load_file

    from tpo.popen.train_cli import builders_for
    from tpo.train.engine import StageRunner
    from tpo.train.logger import read_metrics

    init = _save_init(env.fresh(), env.root / "init")
    cfg = _cfg(
        env.root,
        f"train.init_from={env.root / 'init'}",
        "train.max_steps=3",
        "train.grad_accum=1",
        "train.lr=0.01",
        "popen.base_weight=0.1",  # the stage's loss (LM 10+ on a random LLM) would drown L_t
    )
    runner = StageRunner(cfg, STAGE3, *builders_for(cfg))
    runner.setup()
    fixed = next(env.data.iterate(5))  # the same pairs before and after training
    with torch.no_grad():
        start = runner.model(fixed)
    snapshot = runner.model.reference.snapshot()
    for name, value in init.items():  # the reference is the start checkpoint
        assert torch.equal(snapshot[name.removeprefix("mllm.")], value), name
    declared = runner.model.trainable_groups()
    trained = {id(p) for g in STAGE3.groups() if g in declared for p in declared[g]}
    names = {k for k, p in runner.model.named_parameters() if id(p) in trained}
    before = {k: p.detach().clone() for k, p in runner.model.named_parameters()}
    runner.run()
    after = dict(runner.model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= names, sorted(changed - names)[:5]
    assert any(".lora_" in k for k in changed) and any(
        k.startswith("heads.region") for k in changed
    )
    rows = read_metrics(Path(cfg.train.output_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss/popen_t"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert float(start["loss/popen_t"]) == pytest.approx(math.log(2), abs=1e-6)
    with torch.no_grad():
        end = runner.model(fixed)
    for key in ("loss/popen_t", "loss/popen_s"):
        assert float(end[key]) < float(start[key]), key
    saved = load_file(str(Path(cfg.train.output_dir) / "final" / "weights.safetensors"))
    assert saved and not any(k.startswith("reference") for k in saved)
    assert set(saved) <= {k for k, _ in runner.model.named_parameters()}


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_data_resumes_exactly_follows_the_curriculum_and_counts_bad_records(env):
    from tpo.popen.seg_store import load_segmentation_preferences

    data = env.data
    full = [b for b, _ in zip(data.iterate(0), range(6))]
    resumed = [b for b, _ in zip(data.iterate(3), range(3))]
    assert all(_same(a, b) for a, b in zip(full[3:], resumed))
    assert not _same(full[2], full[3])
    # grad_accum 2, switch at step 1: micro-batches 0 and 1 are coarse, the rest fine
    assert [b.phase for b in full] == ["coarse"] * 2 + ["fine"] * 4
    assert [b.step for b in full] == [0, 0, 1, 1, 2, 2]
    tiers = {}
    for pref in load_segmentation_preferences(env.root / "seg"):
        for e, t in zip(pref.embeddings, pref.tiers):
            tiers[tuple(e.tolist())] = t
    allowed = {"coarse": {("high", "low")}, "fine": {("high", "medium"), ("medium", "low")}}
    for b in full:
        assert len(b.textual[0]) == 2 and len(b.seg[0]) == 2 and len(b.base) == 2
        for w, lo in zip(b.seg[0].h_w, b.seg[0].h_l):
            assert (tiers[tuple(w.tolist())], tiers[tuple(lo.tolist())]) in allowed[b.phase]
        edited = b.textual[0].edit_mask
        assert bool((edited.sum(1) >= 1).all()) and bool((b.textual[0].labels[edited] >= 0).all())
    bad = data.bad_samples
    assert bad["popen_textual_malformed"] == 1 and bad["popen_textual_no_edit"] == 1
    assert bad["popen_seg_no_record"] == 1 and bad["popen_seg_no_pairs"] == 1
    assert len(data.textual.prefs) == 3 and len(data.seg) == 3
    # a resumed run restores every part's skip bookkeeping (saved per rank as JSON)
    state = json.loads(json.dumps(data.state_dict()))
    for part in (data.base.dataset, data.textual, data.seg):
        part.bad_samples.clear()
    data.load_state_dict(state)
    assert data.bad_samples == bad and data.state_dict() == state


def test_pairs_drawn_in_loader_workers_equal_in_process_and_count_bad_media_once(env, tmp_path):
    from tpo.popen.data import build_popen_data

    lines = (env.root / "textual.jsonl").read_text().splitlines()
    missing = {**json.loads(lines[0]), "video": str(tmp_path / "missing.mp4")}
    path = tmp_path / "textual.jsonl"
    path.write_text("".join(x + "\n" for x in [json.dumps(missing), *lines]))

    def stream(workers: int):
        cfg = _cfg(env.root, f"popen.textual={path}", f"data.num_workers={workers}")
        return build_popen_data(cfg, STAGE3, CPU)

    here, there = stream(0), stream(2)
    assert there.pair_loader(0).num_workers == 2
    a = [b for b, _ in zip(here.iterate(0), range(8))]
    b = [b for b, _ in zip(there.iterate(0), range(8))]
    assert all(_same(x.textual, y.textual) and _same(x.seg, y.seg) for x, y in zip(a, b))
    # the unreadable preference is drawn several times, replaced each time, counted once
    sources = {s for batch in a for g in batch.textual for s in g.sources}
    assert sources and f"{path}:1" not in sources and f"{path}:2" in sources
    assert here.bad_samples["popen_textual_video_missing"] == 1
    assert there.bad_samples["popen_textual_video_missing"] == 1


def test_disabled_popen_changes_nothing(env):
    from tpo.popen.data import build_popen_data
    from tpo.popen.objective import build_popen_model
    from tpo.popen.train_cli import builders_for
    from tpo.train.builders import build_train_model
    from tpo.train.data import build_train_data

    assert TPOConfig().popen.enabled is False
    for n in (1, 2, 3):
        cfg = load_config(TPOConfig, [ROOT / "configs" / "tiny" / f"stage{n}.yaml"])
        assert builders_for(cfg) == (build_train_model, build_train_data)
    assert builders_for(env.cfg) == (build_popen_model, build_popen_data)
    model = env.fresh()
    obj = PopenObjective(model, ReferencePolicy("copy"), env.cfg.popen)
    assert [k for k, _ in obj.named_parameters()] == [k for k, _ in model.named_parameters()]
    assert obj.state_dict().keys() == model.state_dict().keys()
    base = next(env.data.iterate(0)).base
    torch.manual_seed(0)
    expected = model(base)
    torch.manual_seed(0)
    got = obj(PopenBatch(base=base))
    assert torch.equal(got["loss"], expected["loss"])
    assert "loss/popen_t" not in got and "loss/popen_s" not in got


@pytest.mark.parametrize(
    "override, key",
    [
        ("popen.reference=frozen", "popen.reference"),
        ("popen.similarity=dot", "popen.similarity"),
        ("popen.beta_s=0", "popen.beta_s"),
        ("popen.pairs_per_step=0", "popen.pairs_per_step"),
        ("popen.enabled=true", "popen.enabled"),
    ],
)
def test_bad_popen_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TPOConfig, [], [override])
