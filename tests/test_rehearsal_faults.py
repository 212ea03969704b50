"""Every invariant of ``make rehearsal`` can fail: each test injects the fault an invariant is there
to catch into recorded measurements (hand-written, the shape :func:`univg.rehearsal.checks.measure`
reads from a run) and sees :func:`univg.rehearsal.checks.check_measurements` report it; a missing
measurement fails too. The sampled-log-prob recorder is checked against hand-derived
distributions: a repetition penalty, a processor transformers adds or a leaked Instruct
generation config shows in the recorded log-prob, so the rehearsal's sampler invariant trips."""

from __future__ import annotations

import math

import pytest
import torch

from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.model.backbone import BackboneSpec
from univg.rehearsal.checks import check_measurements
from univg.rehearsal.probe import configured_logits
from univg.rl.rollout import generate, model_inputs

E = math.e


def _measurements() -> dict:
    """A clean run of the plan's shape: 2 stage-1 steps, 2 stage-2 steps of 1 group per rank."""
    sampling = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
    probe_rank = {
        "groups": 1,
        "groups_nonzero": 1,
        "sampled_absdiff_max": 0.01,
        "sampled_tokens": 150,
        "sampling": dict(sampling),
    }
    return {
        "plan": {"stage1_steps": 2, "stage2_steps": 2, "procs": 2},
        "load_logit_diff": 0.0,
        "stage1": {
            "global_step": 2,
            "lr_last": 0.0,
            "lr_peak": 5e-6,
            "config": {"lr": 5e-6, "schedule": "cosine", "warmup_ratio": 0.015, "min_lr_ratio": 0.0},
        },
        "stage2": {
            "records": [
                {
                    "kl_max": 0.0,
                    "ref_logp_absdiff_max": 0.0,
                    "sampler_gap_max": -2.5,
                    "lr": 1e-6,  # linear from 1e-6 over 2 steps: 1e-6, then 5e-7
                    "phi": "exp",
                    "phi_eps": 0.02,
                    "normalize_phi": False,
                    "miou": [0.1, 0.6],
                    "weights": [E**0.9, E**0.4],  # exp(1 - m)
                    "world_size": 2,
                },
                {
                    "kl_max": 2e-4,
                    "ref_logp_absdiff_max": 0.02,
                    "sampler_gap_max": -2.1,
                    "lr": 5e-7,
                    "phi": "exp",
                    "phi_eps": 0.02,
                    "normalize_phi": False,
                    "miou": [0.3, 0.0],
                    "weights": [E**0.7, E**1.0],
                    "world_size": 2,
                },
            ],
            "probe_steps": [
                {
                    "grad_norm": 0.8,
                    "ranks": [
                        dict(probe_rank, rank=0, adv_abs_mean=0.7),
                        dict(probe_rank, rank=1, adv_abs_mean=0.5),
                    ],
                },
                {
                    "grad_norm": 1.0,
                    "ranks": [
                        dict(probe_rank, rank=0, adv_abs_mean=0.0),
                        dict(probe_rank, rank=1, adv_abs_mean=0.6),
                    ],
                },
            ],
            "weights": {"max_abs_delta": 2e-6, "rel_l2": 3e-7, "params": 9_800_000},
            "config": {
                "lr": 1e-6,
                "schedule": "linear",
                "warmup_ratio": 0.0,
                "min_lr_ratio": 0.0,
                **sampling,
            },
        },
        "eval_rows": [
            # (100, 100)-(500, 500) vs (100, 100)-(300, 500): intersection 200 x 400, union 400 x 400
            {
                "completion": "<think>a</think><answer>(100, 100), (500, 500)</answer>",
                "gt": [100, 100, 300, 500],
                "iou": 0.5,
                "pred": [100, 100, 500, 500],
            },
            {"completion": "(1), (2", "gt": [0, 0, 10, 10], "iou": 0.0, "pred": None},
        ],
    }


def _failing(m: dict) -> dict[str, str]:
    return {name: measured for name, ok, measured in check_measurements(m) if not ok}


def _only(m: dict, words: str) -> str:
    """The one failing invariant, whose name holds ``words``; its measured value."""
    failing = _failing(m)
    assert len(failing) == 1, failing
    ((name, measured),) = failing.items()
    assert words in name, failing
    return measured


def test_the_clean_measurements_pass():
    assert _failing(_measurements()) == {}


def test_a_penalty_or_processor_in_generation_trips_the_sampled_distribution():
    m = _measurements()
    m["stage2"]["probe_steps"][1]["ranks"][1]["sampled_absdiff_max"] = 0.48  # 1.05 on a logit of 10
    assert "0.48 nats" in _only(m, "sampled distribution is the configured one")


def test_sampling_other_than_the_configured_trips_it():
    m = _measurements()  # the run sampled with the Instruct file's top-k 1, not the config's 50
    m["stage2"]["probe_steps"][0]["ranks"][0]["sampling"]["top_k"] = 1
    _only(m, "sampled distribution is the configured one")


def test_a_sampled_token_the_configured_distribution_excludes_trips_it():
    m = _measurements()  # a token outside the configured top-k: its recomputed log-prob is -inf
    m["stage2"]["probe_steps"][0]["ranks"][0]["sampled_absdiff_max"] = math.inf
    _only(m, "sampled distribution is the configured one")


def test_a_scored_log_prob_above_the_sampled_one_trips_the_gap():
    m = _measurements()
    m["stage2"]["records"][1]["sampler_gap_max"] = 0.4
    _only(m, "scored log-prob at most the sampled one")


def test_a_wrong_phi_trips():
    m = _measurements()
    m["stage2"]["records"][1]["weights"][0] *= 1.001  # one rank's group weighted off its mIoU
    _only(m, "phi per group")
    m = _measurements()
    m["stage2"]["records"][0]["normalize_phi"] = True  # weights not normalised as the run asked
    _only(m, "phi per group")


def test_evaluation_iou_differing_from_the_reward_trips():
    m = _measurements()
    m["eval_rows"][0]["iou"] = 0.45
    assert "1 differ" in _only(m, "evaluation IoU == reward IoU")


def test_evaluation_with_no_parsed_prediction_trips():
    m = _measurements()
    m["eval_rows"] = [dict(r, completion="", pred=None, iou=0.0) for r in m["eval_rows"]]
    assert "0 parsed" in _only(m, "evaluation IoU == reward IoU")


def test_kl_or_log_prob_difference_at_the_first_step_trips():
    m = _measurements()
    m["stage2"]["records"][0]["kl_max"] = 1e-3
    _only(m, "KL(policy || reference)")
    m = _measurements()
    m["stage2"]["records"][0]["ref_logp_absdiff_max"] = 1e-3
    _only(m, "policy vs reference log-probs")


def test_a_schedule_of_the_wrong_length_trips():
    m = _measurements()
    # linear over 4 steps (1e-6, 7.5e-7, ...) where the run made 2: its second lr is 7.5e-7, not 5e-7
    m["stage2"]["records"][1]["lr"] = 7.5e-7
    assert "7.5e-07" in _only(m, "stage 2 lr at each step")
    m = _measurements()
    m["stage1"]["lr_last"] = 2.5e-6  # cosine over 4 steps stands at half the peak after 2 (floor not reached)
    _only(m, "stage 1 schedule")


def test_a_wrong_step_count_trips():
    m = _measurements()
    m["stage2"]["probe_steps"].pop()
    _only(m, "stage 2 optimiser steps")
    m = _measurements()
    m["stage1"]["global_step"] = 3
    _only(m, "stage 1 schedule")


def test_a_stage_2_that_learns_nothing_trips():
    m = _measurements()
    for step in m["stage2"]["probe_steps"]:
        step["ranks"][1]["adv_abs_mean"] = 0.0  # rank 1's groups all of zero variance
    assert "rank 1 0" in _only(m, "non-zero advantages on every rank")
    m = _measurements()
    m["stage2"]["probe_steps"][0]["grad_norm"] = 0.0
    _only(m, "gradient norm > 0")
    m = _measurements()
    m["stage2"]["weights"].update(max_abs_delta=0.0, rel_l2=0.0)
    _only(m, "policy weights change")
    m = _measurements()
    for r in m["stage2"]["records"]:  # every group alike: e's everywhere
        r["miou"], r["weights"] = [0.0, 0.0], [E, E]
    _only(m, "groups differ")


def test_a_checkpoint_folder_that_loads_otherwise_trips():
    m = _measurements()
    m["load_logit_diff"] = 1e-3
    _only(m, "checkpoint folder loads")


@pytest.mark.parametrize(
    "path, key, words",
    [
        (("stage2", "records", 0), "kl_max", "KL(policy || reference)"),
        (("stage2", "records", 0), "ref_logp_absdiff_max", "policy vs reference log-probs"),
        (("stage2", "records", 1), "sampler_gap_max", "scored log-prob at most"),
        (("stage2", "records", 1), "lr", "stage 2 lr"),
        (("stage2",), "weights", "policy weights change"),
        (("stage2", "config"), "schedule", "stage 2 lr"),
        (("stage1",), "lr_last", "stage 1 schedule"),
        (("stage2", "probe_steps", 0, "ranks", 1), "sampled_absdiff_max", "sampled distribution"),
        (("stage2", "probe_steps", 1), "grad_norm", "gradient norm"),
        ((), "eval_rows", "evaluation IoU"),
    ],
)
def test_a_missing_measurement_fails_naming_it(path, key, words):
    m = _measurements()
    node = m
    for p in path:
        node = node[p]
    del node[key]
    failing = _failing(m)
    hits = {n: v for n, v in failing.items() if words in n}
    assert hits and all(repr(key) in v and "missing measurement" in v for v in hits.values()), failing


def test_no_stage_2_records_fail_every_stage_2_invariant():
    m = _measurements()
    m["stage2"]["records"], m["stage2"]["probe_steps"] = [], []
    failing = _failing(m)
    # all but the checkpoint, stage 1, evaluation and the weights (their own record) invariants
    kept = ("checkpoint", "stage 1", "evaluation", "weights change")
    assert len(failing) == 10 and not any(k in n for n in failing for k in kept), failing


# --------------------------------------------------------------------------------- the recorder
@pytest.fixture(scope="module")
def prompts(processor):
    return model_inputs(
        GroundingCollator(processor, mode="generate")(
            generate_samples(2, tasks=["single"], image_size=56, seed=1)
        )
    )


def _bias_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny model whose logits are a fixed bias at every position (final norm zeroed): tokens
    0, 1, 5, 2, 3 near 1, everything else at -10."""
    model = BackboneSpec(preset="tiny").build().eval()
    model.model.language_model.norm.weight.data.zero_()
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight.data.zero_()
    head.bias.data.fill_(-10.0)
    head.bias.data[[0, 1, 5, 2, 3]] = torch.tensor([1.0, 0.99, 0.98, 0.97, 0.96])
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model, head.bias.detach().clone()


def _configured(bias: torch.Tensor, ids: torch.Tensor, temperature: float, top_k: int = 0) -> torch.Tensor:
    """The rehearsal's recomputation: log p(token) under the configured sampling of the logits."""
    return torch.log_softmax(configured_logits(bias, temperature, top_k, 1.0), -1)[ids]


def _trips(recorded: torch.Tensor, configured: torch.Tensor, mask: torch.Tensor) -> bool:
    m = _measurements()
    m["stage2"]["probe_steps"][0]["ranks"][0]["sampled_absdiff_max"] = float(
        (recorded - configured)[mask.bool()].abs().max()
    )
    return any("sampled distribution" in name for name in _failing(m))


def test_the_recorded_log_prob_is_after_the_repetition_penalty(prompts, tokenizer):
    model, bias = _bias_model()
    torch.manual_seed(0)
    t, penalty = 0.005, 1.05
    roll = generate(
        model,
        prompts,
        tokenizer,
        group_size=3,
        max_new_tokens=6,
        do_sample=True,
        temperature=t,
        engine="hf",
        record_logprobs=True,
        repetition_penalty=penalty,
    )
    ids, mask = roll.completion_ids, roll.completion_mask
    # hand-derived: transformers' penalty on every token seen (prompt and completion so far):
    # a positive logit divided by it, a negative one multiplied; then the temperature
    expected = torch.zeros(ids.shape)
    prompt = prompts["input_ids"].repeat_interleave(3, 0)
    for n in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            seen = torch.unique(torch.cat([prompt[n], ids[n, :c]]))
            logits = bias.clone()
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
            expected[n, c] = torch.log_softmax(logits / t, -1)[ids[n, c]]
    assert torch.allclose(roll.sampler_logp, expected * mask, atol=1e-4)
    assert _trips(roll.sampler_logp, _configured(bias, ids, t), mask)


def test_the_recorded_log_prob_is_after_a_processor_transformers_adds(prompts, tokenizer, monkeypatch):
    from transformers.generation.utils import GenerationMixin

    def boost_token_2(input_ids, scores):
        scores = scores.clone()
        scores[:, 2] += 3.0
        return scores

    build = GenerationMixin._get_logits_processor

    def build_with_boost(self, *args, **kwargs):
        processors = build(self, *args, **kwargs)
        processors.append(boost_token_2)
        return processors

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", build_with_boost)
    model, bias = _bias_model()
    torch.manual_seed(0)
    roll = generate(
        model,
        prompts,
        tokenizer,
        group_size=3,
        max_new_tokens=4,
        do_sample=True,
        engine="hf",
        record_logprobs=True,
    )
    boosted = bias.clone()
    boosted[2] += 3.0
    ids, mask = roll.completion_ids, roll.completion_mask
    assert torch.allclose(roll.sampler_logp, torch.log_softmax(boosted, -1)[ids] * mask, atol=1e-5)
    assert _trips(roll.sampler_logp, _configured(bias, ids, 1.0), mask)


def test_the_recorded_log_prob_is_after_a_leaked_instruct_generation_config(prompts, tokenizer, monkeypatch):
    import univg.rl.rollout.hf as hf

    explicit = hf.explicit_generation_config

    def leaked(*args, **kwargs):
        config = explicit(*args, **kwargs)  # Qwen2-VL-7B-Instruct's generation_config.json values
        config.top_k, config.top_p, config.temperature = 1, 0.001, 0.01
        return config

    monkeypatch.setattr(hf, "explicit_generation_config", leaked)
    model, bias = _bias_model()
    torch.manual_seed(0)
    roll = generate(
        model,
        prompts,
        tokenizer,
        group_size=4,
        max_new_tokens=4,
        do_sample=True,
        engine="hf",
        record_logprobs=True,
    )
    ids, mask = roll.completion_ids, roll.completion_mask
    # top-k 1 draws the most likely token with certainty: every group's completions are alike
    assert (ids == 0).all() and torch.equal(roll.sampler_logp, torch.zeros_like(roll.sampler_logp))
    configured = _configured(bias, ids, 1.0)  # what the run asked for: temperature 1, no top-k
    assert float(configured[0, 0]) == pytest.approx(float(torch.log_softmax(bias, -1)[0]))
    assert _trips(roll.sampler_logp, configured, mask)


def test_the_recorder_agrees_with_the_configured_distribution_when_nothing_slips_in(prompts, tokenizer):
    model, bias = _bias_model()
    torch.manual_seed(0)
    roll = generate(
        model,
        prompts,
        tokenizer,
        group_size=3,
        max_new_tokens=5,
        do_sample=True,
        temperature=0.7,
        top_k=3,
        engine="hf",
        record_logprobs=True,
    )
    ids, mask = roll.completion_ids, roll.completion_mask
    # hand-derived: the 3 largest of the bias (1.0, 0.99, 0.98) at temperature 0.7
    top = torch.tensor([1.0, 0.99, 0.98]) / 0.7
    by_token = dict(zip([0, 1, 5], torch.log_softmax(top, -1).tolist()))
    expected = torch.tensor([[by_token.get(int(i), -math.inf) for i in row] for row in ids])
    assert torch.allclose(roll.sampler_logp[mask.bool()], expected[mask.bool()], atol=1e-5)
    assert not _trips(roll.sampler_logp, _configured(bias, ids, 0.7, top_k=3), mask)


def test_a_recorder_left_out_of_generation_is_an_error(prompts, tokenizer, monkeypatch):
    import contextlib

    import univg.rl.rollout.hf as hf

    monkeypatch.setattr(hf, "_recording_last", lambda model, recorder: contextlib.nullcontext())
    model, _ = _bias_model()
    with pytest.raises(RuntimeError, match="recorder never ran"):
        generate(
            model,
            prompts,
            tokenizer,
            group_size=2,
            max_new_tokens=3,
            do_sample=True,
            engine="hf",
            record_logprobs=True,
        )
