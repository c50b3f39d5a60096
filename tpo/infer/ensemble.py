"""The POPEN preference ensemble at inference, a decoding strategy (`PreferenceEnsemble`): K
sampled responses, one preference score each, the queries of the pooled head (the mask head's
`<tracking>`) combined by `preference_attention` into one query.

Choices (the paper is silent):
- The K responses are sampled (temperature `temperature`, no top-k / top-p) with one HF
  `generate(num_return_sequences=K)`; a `seed` makes them reproducible for one batch.
- Score (log gamma) of response y: "logp" = mean log-prob of its tokens (eos excluded; an empty
  answer scores its eos) under the policy at temperature 1; "dpo" = the implicit DPO reward
  beta * sum_t [log pi(y_t) - log pi_ref(y_t)], pi_ref = the same model with its LoRA adapters
  disabled. Both come from one teacher-forced pass over prompt + response (per policy).
- Only responses that carry a query of the pooled head (their first one) join the ensemble;
  the query of the attention is their mean embedding. A prompt where none does gets none.
- The answer is the best-scored response: its text and its other heads' queries; only the
  pooled head's query is replaced by the combined embedding (added when the best has none).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch

from tpo.infer.answer import EnsembleRecord
from tpo.infer.decoding import Decoded, seeded
from tpo.infer.preference import preference_attention, preference_weights
from tpo.model.generate import GenerationOutput
from tpo.model.mllm import position_ids

DEFAULT_K = 3
DEFAULT_BETA = 0.1  # DPO's usual coefficient: keeps beta * reward on the attention-logit scale
SCORES = ("logp", "dpo")


@dataclass(frozen=True)
class EnsembleOptions:
    """How to sample and score the ensemble: `k` responses at `temperature`, scored by `score`
    ("logp" or "dpo", the latter scaled by `beta`), sampled under `seed` (None: unseeded)."""

    k: int = DEFAULT_K
    temperature: float = 0.7
    score: str = "logp"
    beta: float = DEFAULT_BETA
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"ensemble: expected K >= 1 responses, got {self.k!r}")
        if not self.temperature > 0:
            raise ValueError(f"ensemble_temperature: expected > 0, got {self.temperature}")
        if self.score not in SCORES:
            raise ValueError(f"ensemble_score: expected one of {SCORES}, got {self.score!r}")
        if not self.beta > 0:
            raise ValueError(f"ensemble beta: expected > 0, got {self.beta}")


@dataclass
class EnsembleGeneration:
    """The K samples behind a batch of `b` ensemble answers.

    samples: the generation of all b*K responses (row i*K + j = response j of prompt i);
    log_gamma: `[b, K]` scores; hidden: `[b, K, d]` first `<tracking>` hidden state of each
    response (zeros where none); used: `[b, K]` bool, which responses have one;
    combined: `[b, d]` the ensemble query (rows without any used response are zeros);
    weights: `[b, K]` each response's attention weight in it (0 where not used);
    best: `[b]` index of the best-scored response.
    """

    samples: GenerationOutput
    log_gamma: torch.Tensor
    hidden: torch.Tensor
    used: torch.Tensor
    combined: torch.Tensor
    weights: torch.Tensor
    best: torch.Tensor


def default_k(cfg) -> int:
    """The config's `popen.ensemble_k` when the config has one, else 3."""
    return int(getattr(getattr(cfg, "popen", None), "ensemble_k", DEFAULT_K))


def resolve_k(ensemble: int | bool | None, default: int = DEFAULT_K) -> int | None:
    """K of an `ask(ensemble=...)` argument: None / False -> None (no ensemble), True -> `default`,
    an int >= 1 -> itself."""
    if ensemble is None or ensemble is False:
        return None
    if ensemble is True:
        return default
    if not isinstance(ensemble, int) or ensemble < 1:
        raise ValueError(f"ensemble: expected None, True or K >= 1, got {ensemble!r}")
    return ensemble


@contextlib.contextmanager
def reference_policy(mllm):
    """The reference of the DPO score: the LLM with its LoRA adapters disabled."""
    if not mllm.llm.is_peft:
        raise ValueError(
            "ensemble_score 'dpo' needs a LoRA LLM (its reference is the LLM with the adapters "
            "disabled); this model has none: use 'logp'"
        )
    with mllm.llm.model.disable_adapter():
        yield


def response_logprobs(
    mllm, visual: torch.Tensor | None, input_ids, attention_mask, responses: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs of `responses` (n = b*K token lists, K per prompt in order)
    after the left-padded prompts `input_ids` `[b, s]` with visual tokens `visual` `[b, q, d]`.

    Returns (sum of token log-probs `[n]`, token count `[n]`); an empty response is scored by
    its eos token.
    """
    n, b = len(responses), len(input_ids)
    k = n // b
    eos, pad = mllm.tokenizer.eos_token_id, mllm.tokenizer.pad_token_id
    tokens = [list(r) if r else [eos] for r in responses]
    length = max(len(t) for t in tokens)
    device = input_ids.device
    resp = torch.full((n, length), pad, dtype=torch.long, device=device)
    resp_mask = torch.zeros((n, length), dtype=attention_mask.dtype, device=device)
    for i, t in enumerate(tokens):
        resp[i, : len(t)] = torch.tensor(t, device=device)
        resp_mask[i, : len(t)] = 1
    prompt = mllm.embed_inputs(input_ids, visual).repeat_interleave(k, 0)  # [n, s, d]
    # the response is embedded as generation fed it (no <track_box> box substitution)
    embeds = torch.cat([prompt, mllm.llm.embed(resp).to(prompt.dtype)], 1)
    mask = torch.cat([attention_mask.repeat_interleave(k, 0), resp_mask], 1)
    out = mllm.llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=False,
        logits_to_keep=length + 1,
    )
    logp = out.logits[:, :-1].float().log_softmax(-1)  # [n, L, V]: position t predicts token t
    picked = logp.gather(-1, resp[..., None])[..., 0] * resp_mask
    return picked.sum(1), resp_mask.sum(1).float()


def score_responses(
    mllm, samples: GenerationOutput, input_ids, attention_mask, opts: EnsembleOptions
) -> torch.Tensor:
    """Log gamma `[b, K]` of the sampled responses (see the module docstring)."""
    visual = None
    if samples.vision is not None:  # the visual tokens generate() used: connector(patches)
        visual = mllm.connector(samples.vision.patches)
    args = (mllm, visual, input_ids, attention_mask, samples.token_ids)
    total, count = response_logprobs(*args)
    if opts.score == "logp":
        score = total / count
    else:
        with reference_policy(mllm):
            ref, _ = response_logprobs(*args)
        score = opts.beta * (total - ref)
    return score.view(len(input_ids), opts.k)


def first_queries(samples: GenerationOutput, n: int, head: int | None):
    """(hidden `[n, d]`, present `[n]` bool): each response's first query of `head`."""
    d = samples.task_hidden.shape[-1]
    hidden = samples.task_hidden.new_zeros(n, d)
    present = torch.zeros(n, dtype=torch.bool)
    for j in range(len(samples.task_head)):
        row = int(samples.task_sample[j])
        if head is not None and int(samples.task_head[j]) == head and not present[row]:
            hidden[row], present[row] = samples.task_hidden[j], True
    return hidden, present


def combine(
    hidden: torch.Tensor, log_gamma: torch.Tensor, used: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preference-attention combination `[b, d]` of the used responses of each prompt and their
    weights `[b, K]` (hidden `[b, K, d]`, log_gamma and used `[b, K]`); zeros where not used.
    The attention query is the mean of the used embeddings."""
    out = hidden.new_zeros(hidden.shape[0], hidden.shape[-1])
    weights = torch.zeros(used.shape, dtype=torch.float32)
    for i in range(len(hidden)):
        if bool(used[i].any()):
            keep = used[i].to(hidden.device)
            emb, lg = hidden[i][keep].float(), log_gamma[i].to(hidden.device)[keep].float()
            out[i] = preference_attention(emb, lg)
            weights[i, used[i]] = preference_weights(emb, lg).cpu()
    return out, weights


@torch.no_grad()
def ensemble_generate(
    mllm,
    frames,
    input_ids,
    attention_mask,
    opts: EnsembleOptions,
    max_new_tokens: int = 64,
    pooled: int | None = None,
) -> EnsembleGeneration:
    """Sample K responses per prompt (frames `[b, f, 3, H, W]`, left-padded prompts `[b, s]`),
    score them and combine their queries of head `pooled`."""
    b = len(input_ids)
    with seeded(opts.seed, input_ids.device):
        samples = mllm.generate(
            frames,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=opts.temperature,
            top_k=0,
            top_p=1.0,
            num_return_sequences=opts.k,
        )
    log_gamma = score_responses(mllm, samples, input_ids, attention_mask, opts)
    hidden, used = first_queries(samples, b * opts.k, pooled)
    hidden, used = hidden.view(b, opts.k, -1), used.view(b, opts.k)
    combined, weights = combine(hidden, log_gamma, used)
    return EnsembleGeneration(
        samples=samples,
        log_gamma=log_gamma,
        hidden=hidden,
        used=used,
        combined=combined,
        weights=weights,
        best=log_gamma.argmax(1),
    )


def best_generation(ens: EnsembleGeneration, pooled: int | None) -> GenerationOutput:
    """The `b` answers as one GenerationOutput: the best-scored responses, with their query of
    head `pooled` replaced by (or, when they have none, completed with) the combined one."""
    s, (b, k) = ens.samples, ens.used.shape
    hidden, head, sample = [], [], []
    for i in range(b):
        row = i * k + int(ens.best[i])
        has_any = bool(ens.used[i].any())
        placed = False
        for j in (s.task_sample == row).nonzero()[:, 0].tolist():
            is_mask = int(s.task_head[j]) == pooled
            hidden.append(ens.combined[i] if is_mask else s.task_hidden[j])
            head.append(int(s.task_head[j]))
            sample.append(i)
            placed = placed or is_mask
        if has_any and not placed:
            hidden.append(ens.combined[i])
            head.append(pooled)
            sample.append(i)
    d = s.task_hidden.shape[-1]
    rows = [i * k + int(ens.best[i]) for i in range(b)]
    return GenerationOutput(
        text=[s.text[r] for r in rows],
        token_ids=[s.token_ids[r] for r in rows],
        vision=s.vision,
        task_hidden=torch.stack(hidden).to(s.task_hidden.dtype)
        if hidden
        else s.task_hidden.new_zeros(0, d),
        task_head=torch.tensor(head, dtype=torch.long),
        task_sample=torch.tensor(sample, dtype=torch.long),
    )


def records(ens: EnsembleGeneration, opts: EnsembleOptions) -> list[EnsembleRecord]:
    """One EnsembleRecord per prompt (its K scores, texts, best index and used flags)."""
    b, k = ens.used.shape
    return [
        EnsembleRecord(
            k=k,
            score=opts.score,
            scores=ens.log_gamma[i].tolist(),
            texts=ens.samples.text[i * k : (i + 1) * k],
            best=int(ens.best[i]),
            used=ens.used[i].tolist(),
            weights=ens.weights[i].tolist(),
            temperature=opts.temperature,
            seed=opts.seed,
        )
        for i in range(b)
    ]


def ensemble_answers(
    mllm,
    frames,
    input_ids,
    attention_mask,
    opts: EnsembleOptions,
    max_new_tokens: int = 64,
    pooled: int | None = None,
) -> tuple[GenerationOutput, list[EnsembleRecord]]:
    """`ensemble_generate` -> (the answers as a GenerationOutput for the heads, their records)."""
    ens = ensemble_generate(mllm, frames, input_ids, attention_mask, opts, max_new_tokens, pooled)
    return best_generation(ens, pooled), records(ens, opts)


class PreferenceEnsemble:
    """The POPEN preference ensemble as a decoding strategy (see the module docstring).

    `opts`: K, temperature, score, beta, seed; `new_draws`: seed + call number, so repeated calls
    (an evaluation's batches) draw anew yet reproducibly (False: every call repeats the seed).
    `records` collects the EnsembleRecord of every prompt answered.
    """

    def __init__(self, opts: EnsembleOptions | None = None, *, new_draws: bool = False) -> None:
        self.opts = opts or EnsembleOptions()
        self.new_draws = new_draws
        self.calls = 0
        self.records: list[EnsembleRecord] = []

    def __call__(
        self, mllm, frames, input_ids, attention_mask, *, max_new_tokens: int, pooled=None
    ) -> Decoded:
        """The best-scored responses with the pooled head's combined query, and their records."""
        opts = self.opts
        if self.new_draws and opts.seed is not None:
            opts = replace(opts, seed=opts.seed + self.calls)
        self.calls += 1
        gen, recs = ensemble_answers(
            mllm, frames, input_ids, attention_mask, opts, max_new_tokens, pooled
        )
        self.records.extend(recs)
        return Decoded(gen, recs)
