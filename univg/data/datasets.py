"""One data module per dataset: its reader (``FORMAT``), defaults (prompt template, pixel limits)
and the benchmark it evaluates; what adding a dataset needs beside its reader and its config."""

from __future__ import annotations

import re
from typing import Any

from univg.core.sample_types import GroundingSample
from univg.data.datamodules import SPLITS, GroundingDataModule
from univg.model.tokenizer import LISA_MAX_PIXELS, MIN_PIXELS

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

    def benchmark(self, stage: str) -> str:
        name = self.eval_file_name(stage)
        return "revos" if "revos" in name else "reasonvos" if "reason" in name else "vos"

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_root: str | None = None,
        prompt_template: str | None = None,
        target_format: str = "cot",
        train_mode: str | None = None,
        eval_mode: str = "generate",
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int | None = None,
        processor_path: str | None = None,
        skip_invalid: bool = False,
        limit: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        max_length: int | None = None,
        frame: str = "qwen2-vl",
        backbone_family: str = "qwen2-vl",
        two_step_resize: bool = False,
        num_frames: int | None = None,
    ) -> None:
        super().__init__(**self._base_args(locals()))
        if num_frames is not None and num_frames < 3:
            raise ValueError(
                f"num_frames must be at least 3 (the target is the third frame) or null, got {num_frames}"
            )
        self.num_frames = num_frames

    def reader_options(self, split: str) -> dict[str, Any]:
        return {"num_frames": self.num_frames}


class SyntheticDataModule(GroundingDataModule):
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
        prompt_template: str | None = None,
        target_format: str = "auto",
        train_mode: str | None = None,
        eval_mode: str = "generate",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int | None = None,
        processor_path: str | None = None,
        seed: int = 0,
        shuffle: bool = True,
        max_length: int | None = None,
        frame: str = "qwen2-vl",
        backbone_family: str = "qwen2-vl",
    ) -> None:
        super().__init__(**self._base_args(locals()))
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
