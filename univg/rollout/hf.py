"""transformers' ``generate`` as a rollout decoder, with every decoding setting stated explicitly."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from univg.rollout.batch import EOS_IDS, PAD_ID, SUPPRESS_IDS, _hf_model, repeat_prompts


def explicit_generation_config(
    group_size: int,
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
) -> Any:
    """A ``GenerationConfig`` that states every setting that changes which tokens come out.

    transformers fills each field left ``None`` from the model's own ``generation_config`` (a
    released checkpoint's ``generation_config.json``), so every processor and warper is set here to
    its neutral value; :func:`generate_hf` also hides the model's config during the call.
    """
    from transformers import GenerationConfig

    greedy = not do_sample
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=1 if greedy else group_size,
        # greedy ignores the warpers; None keeps transformers from warning about unused flags
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else top_k,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        length_penalty=1.0,
        renormalize_logits=False,
        remove_invalid_values=False,
        pad_token_id=PAD_ID,
        eos_token_id=list(EOS_IDS),
        suppress_tokens=list(SUPPRESS_IDS),
        use_cache=True,
        return_dict_in_generate=True,
    )


class _SampledLogProbs:
    """A logits processor placed after the warpers: it keeps the last step's log-probabilities
    ([N, V], one step only) and, at the next step, takes the log-prob of the token drawn from them
    (the last column of ``input_ids``). :meth:`finish` takes the last step's."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length
        self.last: torch.Tensor | None = None
        self.taken: list[torch.Tensor] = []

    def _take(self, tokens: torch.Tensor) -> None:
        if self.last is not None:
            self.taken.append(self.last.gather(1, tokens[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_length:
            self._take(input_ids[:, -1])
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, C] log-probs of the completion tokens ``ids`` [N, C]."""
        if len(self.taken) < ids.shape[1]:
            self._take(ids[:, len(self.taken)])
        self.last = None
        return torch.stack(self.taken[: ids.shape[1]], dim=1) if ids.shape[1] else ids.float()


def generate_hf(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    group_size: int,
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    record_logprobs: bool = False,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers import GenerationConfig, LogitsProcessorList
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    recorder = None
    if record_logprobs:
        # transformers puts a caller's processors before its warpers: to see what is sampled from,
        # the warpers come here in transformers' order, then the recorder (the config states none)
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        recorder = _SampledLogProbs(inputs["input_ids"].shape[1])
        processors.append(recorder)
        temperature, top_k, top_p = 1.0, 0, 1.0
    config = explicit_generation_config(
        group_size, max_new_tokens, min_new_tokens, do_sample, temperature, top_p, top_k
    )
    config.repetition_penalty = repetition_penalty  # 1.0 unless a caller passes one explicitly
    if not do_sample:
        # transformers refuses num_return_sequences > 1 for greedy search: repeat the prompts instead
        inputs = repeat_prompts(inputs, group_size)
    hf = _hf_model(model)
    own = hf.generation_config
    hf.generation_config = GenerationConfig()  # nothing inherited from the checkpoint's file
    try:
        out = model.generate(**inputs, generation_config=config, logits_processor=processors)
    finally:
        hf.generation_config = own
    ids = out.sequences[:, inputs["input_ids"].shape[1] :]  # [B*G, C]
    return ids, (recorder.finish(ids) if recorder is not None else None)
