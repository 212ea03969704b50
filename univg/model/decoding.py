"""How evaluation decodes: plain greedy (our default) or the checkpoint's own generation config.

The release evaluates with ``model.generate(**inputs, max_new_tokens=256)``, so whatever the
checkpoint's ``generation_config.json`` says (sampling, temperature, top-k/top-p, repetition
penalty) silently applies. univg never inherits settings: ``decoding: checkpoint`` reads that file
explicitly (``transformers.GenerationConfig.from_pretrained``) and passes every value that matters
to :func:`univg.rl.rollout.generate`; ``decoding: greedy`` spells out plain greedy decoding. Either
way the settings used are recorded in the results JSON (``decoding``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

DecodingMode = Literal["greedy", "checkpoint"]
DECODING_MODES: tuple[str, ...] = ("greedy", "checkpoint")


@dataclass(frozen=True)
class Decoding:
    """Every setting of one evaluation decode (what the results JSON records)."""

    mode: str
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    repetition_penalty: float = 1.0
    source: str = "explicit greedy"

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`univg.rl.rollout.generate` (repetition penalty only when used,
        so that plain decodes keep the default engine)."""
        kw: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def greedy_decoding(max_new_tokens: int) -> Decoding:
    """Plain greedy decoding, every setting explicit.

    >>> greedy_decoding(256).as_dict()["do_sample"], greedy_decoding(256).generate_kwargs()["top_k"]
    (False, 0)
    """
    return Decoding(mode="greedy", max_new_tokens=max_new_tokens)


def decoding_from_config(config: Any, max_new_tokens: int, source: str) -> Decoding:
    """The settings of a ``transformers.GenerationConfig`` as an explicit :class:`Decoding`.

    ``max_new_tokens`` is ours (the release passes 256 over the file's value). Unset values take
    transformers' defaults, as ``generate`` would: temperature 1, top_p 1, top_k 50 (sampling
    only), repetition penalty 1.

    >>> from transformers import GenerationConfig
    >>> d = decoding_from_config(GenerationConfig(do_sample=True, top_k=1, top_p=0.001,
    ...     temperature=0.01, repetition_penalty=1.05), 256, "x")
    >>> d.do_sample, d.top_k, d.top_p, d.temperature, d.repetition_penalty
    (True, 1, 0.001, 0.01, 1.05)
    """

    def value(name: str, default: Any) -> Any:
        v = getattr(config, name, None)
        return default if v is None else v

    return Decoding(
        mode="checkpoint",
        max_new_tokens=max_new_tokens,
        do_sample=bool(value("do_sample", False)),
        temperature=float(value("temperature", 1.0)),
        top_p=float(value("top_p", 1.0)),
        top_k=int(value("top_k", 50)),
        repetition_penalty=float(value("repetition_penalty", 1.0)),
        source=source,
    )


def checkpoint_decoding(checkpoint: str | os.PathLike | None, max_new_tokens: int) -> Decoding:
    """The checkpoint's ``generation_config.json`` (a folder or hub id), read explicitly.

    A folder without the file decodes as transformers would without it (its defaults: greedy),
    and the recorded ``source`` says so. No checkpoint at all is a configuration error.
    """
    from transformers import GenerationConfig

    if checkpoint is None:
        raise ValueError(
            "decoding 'checkpoint' needs backbone.checkpoint (a Hugging Face folder or hub id with a "
            "generation_config.json); a preset has none: use decoding 'greedy'"
        )
    name = os.fspath(checkpoint)
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "generation_config.json")):
        return decoding_from_config(
            GenerationConfig(),
            max_new_tokens,
            f"transformers defaults ({name} has no generation_config.json)",
        )
    try:
        config = GenerationConfig.from_pretrained(name)
    except OSError as err:
        raise ValueError(
            f"decoding 'checkpoint': cannot read the generation config of {name}: {err}"
        ) from err
    return decoding_from_config(config, max_new_tokens, f"{name}/generation_config.json")
