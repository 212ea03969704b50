"""One data module per dataset: its reader (``FORMAT``), defaults (prompt template, pixel limits)
and the benchmark it evaluates; what adding a dataset needs beside its reader and its config."""

from __future__ import annotations

import re
from typing import Any

from univg.core.sample_types import GroundingSample
from univg.data.datamodules import SPLITS, BaseDataModule, GroundingDataModule
from univg.model.tokenizer import LISA_MAX_PIXELS

_REFCOCO_RE = re.compile(r"(refcoco(?:\+|p|plus|g)?)[_\-/]?(val|testa|testb|test)", re.IGNORECASE)


class MIGBenchDataModule(GroundingDataModule):
    """MIG-Bench (``MIG_data.json`` or the revised file); usually ``test_file`` only."""

    FORMAT = "mig_bench"

    def benchmark(self, stage: str) -> str:
        return "mig_bench_revised" if "revised" in self.eval_file_name(stage) else "mig_bench"


class MGroundingDataModule(GroundingDataModule):
    """MGrounding-630k conversations (coordinates-only targets: use ``target_format: answer``)."""

    FORMAT = "mgrounding"


class CoTSFTDataModule(GroundingDataModule):
    """Stage-1 CoT-SFT files; each sample keeps the prompt template its file was written with."""

    FORMAT = "cot_sft"


class Stage2RLDataModule(GroundingDataModule):
    """Stage-2 RL prompts; ``train_mode`` defaults to ``generate`` (GRPO rollouts)."""

    FORMAT = "stage2_rl"
    DEFAULT_TRAIN_MODE = "generate"


class RefCOCODataModule(GroundingDataModule):
    """RefCOCO/+/g (VLM-R1 REC format), single-image prompt by default."""

    FORMAT = "refcoco"
    DEFAULT_TEMPLATE = "refcoco_single"

    def benchmark(self, stage: str) -> str:
        """``refcoco+/testA`` and the like, from the file name (``refcoco`` when it names none).

        >>> RefCOCODataModule(test_file="data/rec/refcocop_testA.json").benchmark("test")
        'refcoco+/testA'
        """
        m = _REFCOCO_RE.search(self.eval_file_name(stage))
        if not m:
            return "refcoco"
        ds = m.group(1).lower().replace("plus", "+").replace("refcocop", "refcoco+")
        split = {"testa": "testA", "testb": "testB"}.get(m.group(2).lower(), m.group(2).lower())
        return f"{ds}/{split}"


class LISADataModule(GroundingDataModule):
    """LISA-Grounding zero-shot eval (max_pixels 640,000 as the release)."""

    FORMAT = "lisa"
    DEFAULT_TEMPLATE = "lisa"
    DEFAULT_MAX_PIXELS = LISA_MAX_PIXELS

    def benchmark(self, stage: str) -> str:
        name = self.eval_file_name(stage)
        return next((f"lisa/{split}" for split in ("val", "test") if split in name), "lisa")


class LLMSegDataModule(GroundingDataModule):
    """LLMSeg-Grounding zero-shot eval (max_pixels 640,000 as the release)."""

    FORMAT = "llmseg"
    DEFAULT_TEMPLATE = "llmseg"
    DEFAULT_MAX_PIXELS = LISA_MAX_PIXELS


class VOSDataModule(GroundingDataModule):
    """ReasonVOS / ReVOS zero-shot eval: ground on the third frame (max_pixels 640,000).

    Every listed frame is used (the release's evaluation); ``num_frames: 6`` samples records with
    more frames down to 6, uniformly, which moves the target frame (see :mod:`univg.data.readers.vos`).
    """

    FORMAT = "vos"
    DEFAULT_TEMPLATE = "vos"
    DEFAULT_MAX_PIXELS = LISA_MAX_PIXELS

    def __init__(self, num_frames: int | None = None, **kwargs: Any) -> None:
        """``num_frames`` (class docstring); every other argument is :class:`GroundingDataModule`'s."""
        super().__init__(**kwargs)
        if num_frames is not None and num_frames < 3:
            raise ValueError(
                f"num_frames must be at least 3 (the target is the third frame) or null, got {num_frames}"
            )
        self.num_frames = num_frames

    def benchmark(self, stage: str) -> str:
        name = self.eval_file_name(stage)
        return "revos" if "revos" in name else "reasonvos" if "reason" in name else "vos"

    def reader_options(self, split: str) -> dict[str, Any]:
        return {"num_frames": self.num_frames}


class SyntheticDataModule(BaseDataModule):
    """Seeded in-memory synthetic grounding (:func:`univg.data.synthetic.generate_samples`).

    Train, val and test use seeds ``seed``, ``seed + 1``, ``seed + 2`` so they never share samples.
    ``synthetic`` passes further keyword arguments to the generator. Targets default to ``auto``
    (the generator writes a short reasoning chain for every sample).
    """

    def __init__(
        self,
        num_train: int = 64,
        num_val: int = 16,
        num_test: int = 0,
        tasks: list[str] | None = None,
        image_size: int = 112,
        synthetic: dict[str, Any] | None = None,
        target_format: str = "auto",
        batch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        """The counts, tasks and generator settings, and defaults of its own for two shared
        arguments; every other argument is :class:`BaseDataModule`'s."""
        super().__init__(target_format=target_format, batch_size=batch_size, **kwargs)
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.tasks = tasks
        self.image_size = image_size
        self.synthetic = dict(synthetic or {})

    def read_split(self, split: str) -> list[GroundingSample] | None:
        from univg.data.synthetic import generate_samples

        n = self.counts[split]
        if not n:
            return None
        offset = SPLITS.index(split)
        return generate_samples(
            n, tasks=self.tasks, image_size=self.image_size, seed=self.seed + offset, **self.synthetic
        )
