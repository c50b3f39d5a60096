"""CG-DETR's external features: npz video / query files, tpo's encoder and the LLM's embeddings
as sources, given features first, `as_features`, and their way through training batches and
`ask`."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_dataset import rec
from test_video import write_mp4
from torch import nn

from tpo.config.heads import CGDETRConfig, TemporalHeadConfig
from tpo.data.dataset import VideoTaskDataset
from tpo.heads.cgdetr_features import (
    ClipFeatures,
    LLMQueryFeatures,
    NpzQueryFeatures,
    NpzVideoFeatures,
    VisionVideoFeatures,
    as_features,
    build_query_source,
    build_video_source,
)
from tpo.infer.predictor import AskOptions
from tpo.model.task_head import HeadSample

ROOT = Path(__file__).resolve().parents[1]


def _sample(**kw) -> HeadSample:
    kw.setdefault("duration", 3.0)
    return HeadSample(**kw)


def _feats(t: int, d: int) -> np.ndarray:
    return np.arange(t * d, dtype=np.float64).reshape(t, d) / 7.0


# ---------------------------------------------------------------- npz video features


def test_npz_video_round_trip_gives_clip_centres_at_the_file_rate(tmp_path):
    np.savez(tmp_path / "vid_a.npz", features=_feats(6, 4))
    out = NpzVideoFeatures(tmp_path, fps=2.0, dim=4)(_sample(video="/videos/vid_a.mp4"))
    assert isinstance(out, ClipFeatures) and out.fps == 2.0
    assert out.feats.dtype == torch.float32
    assert torch.allclose(out.feats, torch.tensor(_feats(6, 4), dtype=torch.float32))
    # 6 features at 2/s: centres 0.25, 0.75, ..., 2.75 s
    assert torch.allclose(out.times, torch.tensor([0.25, 0.75, 1.25, 1.75, 2.25, 2.75]))


def test_npz_video_features_are_cut_to_the_asked_clip(tmp_path):
    np.savez(tmp_path / "vid_a.npz", features=_feats(6, 4))
    src = NpzVideoFeatures(tmp_path, fps=2.0, dim=4)
    out = src(_sample(video="vid_a.mp4", clip_start=1.0, duration=1.0))
    # centres 1.25 and 1.75 s of the video lie in [1, 2): rows 2 and 3, at 0.25 / 0.75 s of the clip
    assert torch.allclose(out.times, torch.tensor([0.25, 0.75]))
    assert torch.equal(out.feats, torch.tensor(_feats(6, 4)[2:4], dtype=torch.float32))
    with pytest.raises(ValueError, match=r"vid_a\.npz.*none inside the clip \[10, 11\]"):
        src(_sample(video="vid_a.mp4", clip_start=10.0, duration=1.0))


def test_missing_video_file_names_the_video_and_the_folder(tmp_path):
    src = NpzVideoFeatures(tmp_path / "feats", fps=1.0, dim=4)
    with pytest.raises(FileNotFoundError) as err:
        src(_sample(video="/data/videos/abc_123.mp4"))
    assert "'abc_123'" in str(err.value) and str(tmp_path / "feats") in str(err.value)
    with pytest.raises(ValueError, match="not a file"):
        src(_sample(video=None))


def test_wrong_key_lists_the_keys_found(tmp_path):
    np.savez(tmp_path / "v.npz", feats=_feats(3, 4), timestamps=np.arange(3.0))
    with pytest.raises(KeyError) as err:
        NpzVideoFeatures(tmp_path, 1.0, 4)(_sample(video="v.mp4"))
    msg = str(err.value)
    assert "'features'" in msg and "['feats', 'timestamps']" in msg and "v.npz" in msg


def test_wrong_width_says_expected_and_got_with_the_file(tmp_path):
    np.savez(tmp_path / "v.npz", features=_feats(3, 5))
    with pytest.raises(ValueError, match=r"v\.npz.*expected features of width 4, got 5"):
        NpzVideoFeatures(tmp_path, 1.0, 4)(_sample(video="v.mp4"))


@pytest.mark.parametrize(
    "array, why",
    [
        (np.zeros(4), r"\[n, d\].*\(4,\)"),  # 1-d
        (np.zeros((2, 3, 4)), r"\[n, d\].*\(2, 3, 4\)"),  # 3-d
        (np.zeros((0, 4)), r"\[n, d\].*\(0, 4\)"),  # empty
        (np.array([[0.0, 1, 2, np.nan]]), "NaN"),
    ],
)
def test_bad_arrays_name_the_file(tmp_path, array, why):
    np.savez(tmp_path / "bad_vid.npz", features=array)
    with pytest.raises(ValueError, match=rf"bad_vid\.npz.*{why}"):
        NpzVideoFeatures(tmp_path, 1.0, 4)(_sample(video="bad_vid.mp4"))


def test_a_file_that_is_no_npz_is_reported(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable npz"):
        NpzVideoFeatures(tmp_path, 1.0, 4)(_sample(video="junk.mp4"))


# ---------------------------------------------------------------- npz query features


def test_npz_query_round_trip_and_errors(tmp_path):
    np.savez(tmp_path / "qid7803.npz", last_hidden_state=_feats(5, 6), pooler_output=np.zeros(6))
    out = NpzQueryFeatures(tmp_path, 6)(_sample(qid="7803"))
    assert out.dtype == torch.float32 and torch.allclose(out, torch.tensor(_feats(5, 6)).float())
    assert NpzQueryFeatures(tmp_path)(_sample(qid="7803")).shape == (5, 6)  # dim None: any
    with pytest.raises(FileNotFoundError) as err:
        NpzQueryFeatures(tmp_path / "text")(_sample(qid="42"))
    assert "'42'" in str(err.value) and str(tmp_path / "text") in str(err.value)
    with pytest.raises(ValueError, match=r"qid7803\.npz.*expected features of width 8, got 6"):
        NpzQueryFeatures(tmp_path, 8)(_sample(qid="7803"))
    np.savez(tmp_path / "qid1.npz", pooler_output=_feats(1, 6))
    with pytest.raises(KeyError, match=r"'last_hidden_state'.*\['pooler_output'\]"):
        NpzQueryFeatures(tmp_path)(_sample(qid="1"))
    with pytest.raises(ValueError, match="no qid"):
        NpzQueryFeatures(tmp_path)(_sample())


# ---------------------------------------------------------------- given features, other sources


def _raises():
    raise AssertionError("the source read its own features although some were given")


def test_given_features_come_first(tmp_path):
    given_v = torch.randn(4, 3, dtype=torch.float64)
    given_q = torch.randn(2, 5)
    sample = _sample(
        video="nowhere.mp4", qid="9", frame_features=_raises,
        video_features=given_v, query_features=given_q, query_ids=torch.tensor([1, 2]),
    )  # fmt: skip
    for src in (NpzVideoFeatures(tmp_path, 4.0, 3), VisionVideoFeatures(4.0)):
        out = src(sample)  # no npz file, no encoder call
        assert out.fps == 4.0 and torch.equal(out.feats, given_v.float())
        assert torch.allclose(out.times, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    embed = nn.Embedding(10, 5)
    for qsrc in (NpzQueryFeatures(tmp_path, 5), LLMQueryFeatures(embed)):
        assert torch.equal(qsrc(sample), given_q)
    with pytest.raises(ValueError, match="given video_features.*width 8, got 3"):
        NpzVideoFeatures(tmp_path, 1.0, 8)(sample)


def test_vision_source_reads_the_encoders_frame_features():
    feats, times = torch.randn(3, 8), torch.tensor([0.5, 1.5, 2.5])
    src = build_video_source(TemporalHeadConfig(kind="cgdetr", feat_fps=1.0))
    assert isinstance(src, VisionVideoFeatures) and src.fps == 1.0
    out = src(_sample(frame_features=lambda: (feats, times)))
    assert torch.equal(out.feats, feats) and torch.equal(out.times, times) and out.fps == 1.0
    with pytest.raises(ValueError, match="no per-frame feature source"):
        src(_sample())
    spatial = _sample(frame_features=lambda: (torch.randn(3, 4, 8), times))
    with pytest.raises(ValueError, match=r"frame features.*\(3, 4, 8\)"):
        src(spatial)


def test_llm_query_features_are_the_embedding_rows_without_gradient():
    embed = nn.Embedding(12, 6).double()
    ids = torch.tensor([3, 1, 4, 1])
    for fn in (embed, embed.forward):  # a module or a bound method of one
        out = LLMQueryFeatures(fn)(_sample(query_ids=ids))
        assert out.dtype == torch.float32 and out.shape == (4, 6)
        assert not out.requires_grad and out.grad_fn is None
        assert torch.equal(out, embed.weight[ids].detach().float())
    with pytest.raises(ValueError, match="no query token ids"):
        LLMQueryFeatures(embed)(_sample(query_ids=torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no query token ids"):
        LLMQueryFeatures(embed)(_sample())


def test_build_sources_from_the_config(tmp_path):
    npz = CGDETRConfig(video_features="npz", video_feature_dir=str(tmp_path),
                       video_feature_fps=0.5, video_feature_dim=768, query_features="npz",
                       query_feature_dir=str(tmp_path / "q"), t_feat_dim=4096)  # fmt: skip
    v = build_video_source(TemporalHeadConfig(kind="cgdetr", cgdetr=npz))
    assert isinstance(v, NpzVideoFeatures) and (v.folder, v.fps, v.dim) == (tmp_path, 0.5, 768)
    q = build_query_source(npz, None)
    assert isinstance(q, NpzQueryFeatures) and (q.folder, q.dim) == (tmp_path / "q", 4096)
    embed = nn.Embedding(3, 2)
    assert isinstance(build_query_source(CGDETRConfig(), embed), LLMQueryFeatures)
    with pytest.raises(ValueError, match="needs the LLM's embedding"):
        build_query_source(CGDETRConfig(), None)


# ---------------------------------------------------------------- as_features


def test_as_features_takes_arrays_tensors_and_npz_paths(tmp_path):
    a = _feats(3, 4)
    assert torch.equal(as_features(a, "video"), torch.tensor(a, dtype=torch.float32))
    t = torch.tensor(a)
    out = as_features(t, "query")
    assert out.dtype == torch.float32 and torch.equal(out, t.float())
    np.savez(tmp_path / "v.npz", features=a)
    np.savez(tmp_path / "q.npz", last_hidden_state=a[:2])
    assert torch.equal(as_features(tmp_path / "v.npz", "video"), torch.tensor(a).float())
    assert as_features(str(tmp_path / "q.npz"), "query").shape == (2, 4)
    with pytest.raises(KeyError, match=r"'last_hidden_state'.*\['features'\]"):
        as_features(tmp_path / "v.npz", "query")
    with pytest.raises(FileNotFoundError, match=r"video_features: .*missing\.npz"):
        as_features(tmp_path / "missing.npz", "video")
    with pytest.raises(ValueError, match=r"query_features: expected features \[n, d\]"):
        as_features(np.zeros(4), "query")
    with pytest.raises(TypeError, match="got list"):
        as_features([[1.0, 2.0]], "video")
    with pytest.raises(ValueError, match="'video' or 'query'"):
        as_features(a, "audio")


# ---------------------------------------------------------------- plumbing: training and ask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model, its collator, and a 2-s mp4."""
    from tpo.config import TPOConfig, load_config
    from tpo.heads.build import build_model
    from tpo.model.build import build_collator

    cfg = load_config(TPOConfig, [ROOT / "configs/tiny/stage3.yaml"], ["model.heads.mask=null"])
    model = build_model(cfg.model).float().eval()
    mp4 = write_mp4(tmp_path_factory.mktemp("cg") / "clip_7.mp4", num=20, fps=10, size=32)
    return cfg, model, build_collator(cfg.model, model.mllm), str(mp4)


def test_training_batches_carry_question_ids_and_qids(tiny):
    from tpo.train.data import collate

    cfg, model, collator, mp4 = tiny
    records = [rec(mp4, "temporal", qid="7803", windows=[(0.5, 1.0)]), rec(mp4, qid="c1")]
    records[0].question = "When does the dog jump?"
    ds = VideoTaskDataset(records, num_frames=cfg.data.num_frames, img_size=32)
    batch = collate([ds[0], ds[1]], collator).to("cpu")
    assert batch.qids == ["7803", "c1"]
    for ids, r in zip(batch.query_ids, records):
        expect = collator.tokenizer(r.question, add_special_tokens=False)["input_ids"]
        assert ids.dtype == torch.long and ids.tolist() == expect
    samples = model.head_samples(batch)
    assert [s.qid for s in samples] == ["7803", "c1"]
    assert all(torch.equal(s.query_ids, i) for s, i in zip(samples, batch.query_ids))


def test_ask_features_reach_the_head_sample(tiny, tmp_path, monkeypatch):
    from tpo.infer.api import TPOPipeline

    cfg, model, collator, mp4 = tiny
    pipe = TPOPipeline(model, collator, num_frames=4, img_size=cfg.model.vision.img_size)
    seen = {}

    def answer(inputs, questions, histories, *, options, **kw):
        seen.update(inputs=inputs, questions=questions, options=options)
        return ["answered"]

    monkeypatch.setattr(pipe.predictor, "answer", answer)
    video = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "q.npz", last_hidden_state=np.ones((2, 5)))
    question = "When does the dog jump?"
    opts = AskOptions(asked_frame=1, qid="7803")
    assert pipe.ask(mp4, question, video_features=video, query_features=tmp_path / "q.npz",
                    options=opts) == "answered"  # fmt: skip
    (opt,) = seen["options"]
    assert opt.asked_frame == 1 and opt.qid == "7803" and opts.video_features is None
    sample = pipe.predictor.head_sample(seen["inputs"][0], question, opt)
    assert torch.equal(sample.video_features, torch.from_numpy(video))
    assert torch.equal(sample.query_features, torch.ones(2, 5))
    assert sample.qid == "7803" and sample.video == mp4
    expect = collator.tokenizer(question, add_special_tokens=False)["input_ids"]
    assert sample.query_ids.tolist() == expect
    # without given features the npz source finds the video's file by its name
    np.savez(tmp_path / "clip_7.npz", features=_feats(2, 3))
    plain = pipe.predictor.head_sample(seen["inputs"][0], question, AskOptions())
    assert plain.video_features is None and plain.qid is None
    assert NpzVideoFeatures(tmp_path, 1.0, 3)(plain).feats.shape == (2, 3)
    pipe.ask_batch([(mp4, question)] * 2, query_features=[None, np.ones((1, 5))])
    assert seen["options"][0] is None and seen["options"][1].query_features.shape == (1, 5)
    with pytest.raises(ValueError, match="1 video_features for 2 pairs"):
        pipe.ask_batch([(mp4, question)] * 2, video_features=[video])
