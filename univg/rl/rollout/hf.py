"""transformers' ``generate`` as a rollout decoder, with every decoding setting stated explicitly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from univg.rl.rollout.batch import EOS_IDS, PAD_ID, SUPPRESS_IDS, _hf_model, repeat_prompts


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
    """The last logits processor of a ``generate`` call (:func:`generate_hf` appends it to the list
    transformers builds, after every processor and warper): it keeps the last step's
    log-probabilities ([N, V], one step only), those of the distribution the token is drawn from,
    and, at the next step, takes the log-prob of the token drawn (the last column of
    ``input_ids``). :meth:`finish` takes the last step's."""

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
        if ids.shape[1] and not self.taken and self.last is None:
            raise RuntimeError(
                "the sampled log-prob recorder never ran: transformers' generate did not build its "
                "logits processors through _get_logits_processor, where generate_hf appends it"
            )
        if len(self.taken) < ids.shape[1]:
            self._take(ids[:, len(self.taken)])
        self.last = None
        return torch.stack(self.taken[: ids.shape[1]], dim=1) if ids.shape[1] else ids.float()


@contextmanager
def _recording_last(hf: nn.Module, recorder: _SampledLogProbs | None) -> Iterator[None]:
    """Within the block, ``hf.generate`` appends ``recorder`` to the logits processors it builds,
    after every one of them (a caller's ``logits_processor`` list goes before transformers' warpers)."""
    if recorder is None:
        yield
        return
    build = hf._get_logits_processor

    def build_then_record(*args: Any, **kwargs: Any) -> Any:
        processors = build(*args, **kwargs)
        processors.append(recorder)
        return processors

    hf._get_logits_processor = build_then_record
    try:
        yield
    finally:
        del hf._get_logits_processor


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
    """transformers' ``generate`` under :func:`explicit_generation_config`. With ``record_logprobs``,
    each drawn token's log-prob under the distribution it was drawn from: recorded after every
    processor and warper ``generate`` applies (repetition penalty, temperature, top-k, top-p, ...)."""
    from transformers import GenerationConfig

    recorder = _SampledLogProbs(inputs["input_ids"].shape[1]) if record_logprobs else None
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
        with _recording_last(hf, recorder):
            out = model.generate(**inputs, generation_config=config)
    finally:
        hf.generation_config = own
    ids = out.sequences[:, inputs["input_ids"].shape[1] :]  # [B*G, C]
    return ids, (recorder.finish(ids) if recorder is not None else None)
