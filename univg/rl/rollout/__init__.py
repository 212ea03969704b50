"""Sampling completions and scoring their tokens (log-probs) with a Qwen2-VL policy.

Prompt batches are LEFT padded, so every prompt ends at the same position P and completions start
at P. Two kinds of work are shared across the G completions of a prompt (docs/design.md section 8):

- **generation** (:mod:`univg.rl.rollout.sampling`, ``engine="shared"``, the default): each prompt's
  images are encoded once and the prompt prefilled once; the KV cache is repeated G times and the
  G continuations are decoded from it by our own loop. ``engine="hf"`` runs transformers'
  ``generate`` (:mod:`univg.rl.rollout.hf`).
- **log-probs** (:mod:`univg.rl.rollout.logprobs`, ``shared_prefix=True``): the prompt prefix runs once
  per prompt and only ``[last prompt token, completion]`` goes through the decoder for each row; the
  head sees only real completion tokens, in tiles (on the repeated-prompt path too, which gradient
  checkpointing and FSDP take).

:mod:`univg.rl.rollout.batch` holds what both share: :class:`Rollout`, the masks and the model plumbing.
GRPO picks how it samples through a rollout engine (:mod:`univg.engines`).
"""

from univg.rl.rollout.batch import (
    EOS_IDS,
    MODEL_KEYS,
    PAD_ID,
    SUPPRESS_IDS,
    Rollout,
    check_left_padded,
    completion_mask,
    decode_completions,
    finish_rollout,
    images_per_prompt,
    model_inputs,
    repeat_prompts,
    rope_positions,
)
from univg.rl.rollout.draw import draw, draw_categorical, sample_next, sampling_logits
from univg.rl.rollout.hf import explicit_generation_config
from univg.rl.rollout.logprobs import (
    HEAD_TOKENS_PER_TILE,
    completion_logprobs,
    head_logprobs,
    shared_prefix_allowed,
)
from univg.rl.rollout.sampling import ENGINES, Decoder, SamplingSpec, generate

__all__ = [
    "ENGINES",
    "EOS_IDS",
    "HEAD_TOKENS_PER_TILE",
    "MODEL_KEYS",
    "PAD_ID",
    "SUPPRESS_IDS",
    "Decoder",
    "Rollout",
    "SamplingSpec",
    "check_left_padded",
    "completion_logprobs",
    "completion_mask",
    "decode_completions",
    "draw",
    "draw_categorical",
    "explicit_generation_config",
    "finish_rollout",
    "generate",
    "head_logprobs",
    "images_per_prompt",
    "model_inputs",
    "repeat_prompts",
    "rope_positions",
    "sample_next",
    "sampling_logits",
    "shared_prefix_allowed",
]
