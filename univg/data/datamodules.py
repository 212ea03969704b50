"""Lightning data modules, usable from YAML (``data.class_path: univg.data.MIGBenchDataModule``).

:class:`BaseDataModule` holds what every data module shares (the one argument set, the samples
of each split in memory, images staying paths until a batch needs them, collation with
:class:`GroundingCollator`); :class:`GroundingDataModule` reads files with a registered reader.
One subclass of it per dataset (:mod:`univg.data.datasets`) fixes the format, sensible defaults (prompt
template, pixel limits) and the benchmark it evaluates; :class:`~univg.data.datasets.SyntheticDataModule`
generates in-memory samples; :class:`~univg.data.mixture.MixtureDataModule` draws a seeded mixture
of sources.

``train_mode`` is ``"train"`` for SFT (labels) or ``"generate"`` for GRPO (prompt-only batches,
left padded); ``eval_mode`` is the same choice for validation/test/predict (default ``"generate"``).

Training data takes an explicit box policy, ``degenerate_boxes`` (:data:`TrainDegeneratePolicy`):
``swap`` (default: inverted corners are swapped into the box they describe, and counted; a box
with no area at all is skipped and listed), ``skip`` (every inverted or empty box skipped and
listed) or ``error``. A training target is never an inverted box kept as it is. Evaluation
splits are read with the readers' ``keep`` (flagged; the evaluation decides how to score them).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset

from univg.core.sample_types import GroundingSample, SampleError
from univg.data.collate import MODES, GroundingCollator
from univg.data.loader import ResumableDataLoader
from univg.data.readers import read_samples
from univg.data.release_resize import TwoStepResizeProcessor
from univg.model.presets import FAMILIES
from univg.model.tokenizer import MIN_PIXELS, TRAIN_MAX_PIXELS, load_processor

SPLITS = ("train", "val", "test")

#: What training data does with an inverted or empty box (the readers' ``keep`` is not offered:
#: a kept inverted box would become a training target).
TrainDegeneratePolicy = Literal["swap", "skip", "error"]


class SampleDataset(Dataset):
    """A map-style dataset over an in-memory list of samples."""

    def __init__(self, samples: Sequence[GroundingSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> GroundingSample:
        return self.samples[i]


class BaseDataModule(L.LightningDataModule):
    """What every univg data module takes and does: in-memory samples per split -> collated batches.

    Subclasses say where the samples come from (:meth:`read_split`): files
    (:class:`GroundingDataModule` and the per-dataset modules), the synthetic generator or a
    mixture of sources. ``None`` for ``prompt_template``, ``max_pixels`` and ``train_mode``
    means the class default (``DEFAULT_TEMPLATE``, ``DEFAULT_MAX_PIXELS``, ``DEFAULT_TRAIN_MODE``).
    ``limit`` keeps the first N samples of each split (smoke runs); ``seed`` drives the train shuffle.

    ``val_count`` keeps a seeded draw of that many validation samples (all when ``None``), so a
    periodic validation sees every task of a file sorted by task. ``degenerate_boxes`` is the
    training data's box policy (module docstring).
    ``frame`` and ``backbone_family`` are the model's (linked from it by the CLI): the coordinates the
    targets are written in, and the family whose image processor is used without ``processor_path``.
    ``two_step_resize`` resizes each image to multiples of 28 before the processor's own resize,
    as the release's evaluation did (:mod:`univg.data.release_resize`); off: one resize.
    """

    DEFAULT_TEMPLATE: ClassVar[str] = "reasoning"
    DEFAULT_MAX_PIXELS: ClassVar[int] = TRAIN_MAX_PIXELS
    DEFAULT_TRAIN_MODE: ClassVar[str] = "train"
    #: The benchmark this module evaluates (a key of ``univg.evaluation.tables.BENCHMARKS``); None:
    #: the class name without ``DataModule``. A dataset whose files name their split overrides
    #: :meth:`benchmark`.
    BENCHMARK: ClassVar[str | None] = None

    def __init__(
        self,
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
        degenerate_boxes: TrainDegeneratePolicy = "swap",
        val_count: int | None = None,
        two_step_resize: bool = False,
    ) -> None:
        super().__init__()
        #: the files read per split (the file-reading modules set them; named in errors)
        self.files: dict[str, str | None] = dict.fromkeys(SPLITS)
        self.train_mode = train_mode or self.DEFAULT_TRAIN_MODE
        for name, mode in (("train_mode", self.train_mode), ("eval_mode", eval_mode)):
            if mode not in MODES:
                raise ValueError(f"{name} must be one of {MODES}, got {mode!r}")
        self.eval_mode = eval_mode
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size is not None and size < 1:  # torch's DataLoader would fail later, naming no key
                raise ValueError(f"{name} must be >= 1, got {size}")
        self.prompt_template = prompt_template or self.DEFAULT_TEMPLATE
        self.target_format = target_format
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or self.batch_size
        self.num_workers = num_workers
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels or self.DEFAULT_MAX_PIXELS
        self.processor_path = processor_path
        self.skip_invalid = skip_invalid
        self.limit = limit
        self.seed = seed
        self.shuffle = shuffle
        self.max_length = max_length
        self.frame = frame
        if backbone_family not in FAMILIES:
            raise ValueError(f"unknown backbone_family {backbone_family!r}; choose one of {sorted(FAMILIES)}")
        self.backbone_family = backbone_family
        if degenerate_boxes not in ("swap", "skip", "error"):  # also checked by the CLI's type
            raise ValueError(f"degenerate_boxes must be 'swap', 'skip' or 'error', got {degenerate_boxes!r}")
        if val_count is not None and val_count < 1:
            raise ValueError(f"val_count must be a positive number of samples or null, got {val_count}")
        self.degenerate_boxes = degenerate_boxes
        self.val_count = val_count
        self.two_step_resize = two_step_resize
        self.samples: dict[str, list[GroundingSample] | None] = dict.fromkeys(SPLITS)
        self._processor: Any = None

    # ---- reading ---------------------------------------------------------------------------------

    def read_split(self, split: str) -> list[GroundingSample] | None:
        """The samples of ``split`` (``None`` when it has none). Subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} does not say where its {split} samples come from")

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if self.samples[split] is None:
                samples = self.read_split(split)
                if samples is not None and split == "val" and self.val_count is not None:
                    samples = self.draw_val(samples)
                if samples is not None and self.limit is not None:
                    samples = samples[: self.limit]
                self.samples[split] = samples

    def draw_val(self, samples: Sequence[GroundingSample]) -> list[GroundingSample]:
        """A seeded draw of ``val_count`` samples, in file order (all of them when fewer)."""
        n = min(self.val_count or len(samples), len(samples))
        keep = sorted(random.Random(f"{self.seed}/val").sample(range(len(samples)), n))
        print(f"[univg.data] val: {n} of {len(samples)} samples (seeded draw, val_count {self.val_count})")
        return [samples[i] for i in keep]

    @property
    def train_samples(self) -> list[GroundingSample]:
        return self._need("train")

    @property
    def val_samples(self) -> list[GroundingSample]:
        return self._need("val")

    @property
    def test_samples(self) -> list[GroundingSample]:
        return self._need("test")

    def evaluation_samples(self, split: str) -> list[GroundingSample]:
        """The samples of an evaluation split that the current run evaluates.

        The trainer's module may narrow the split: univg's modules answer ``evaluation_view(split,
        samples)`` with the samples left after screening out records that cannot be evaluated and
        those a resumed run already finished (:class:`univg.evaluation.EvaluationWriter`). The
        split itself is never changed; without a trainer, or for a module without that method, it
        is served whole.
        """
        samples = self._need(split)
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        view = getattr(module, "evaluation_view", None)
        return view(split, samples) if callable(view) else samples

    def _need(self, split: str) -> list[GroundingSample]:
        if self.samples[split] is None:
            self.setup()
        samples = self.samples[split]
        if samples is None:
            raise ValueError(f"{type(self).__name__}: no {split} data configured")
        if len(samples) == 0:
            # an empty split trains nothing (Lightning stops at once, saving nothing) or evaluates
            # nothing (a table of dashes): refused when it is used, naming the file
            where = self.files.get(split) or f"the {split} split"
            raise SampleError(
                f"data.init_args.{split}_file {where}: no {split} samples"
                + (f" (limit {self.limit})" if self.limit is not None else "")
            )
        return samples

    # ---- batches ---------------------------------------------------------------------------------

    @property
    def processor(self) -> Any:
        if self._processor is None:
            family = FAMILIES[self.backbone_family]
            self._processor = load_processor(
                self.processor_path, self.min_pixels, self.max_pixels, family=family
            )
        return self._processor

    def collator(self, mode: str) -> GroundingCollator:
        processor = TwoStepResizeProcessor(self.processor) if self.two_step_resize else self.processor
        return GroundingCollator(
            processor,
            mode=mode,
            prompt_template=self.prompt_template,
            target_format=self.target_format,
            image_root=None,  # the readers already joined image_root into absolute paths
            frame=self.frame,
            max_length=self.max_length,
        )

    def _loader(self, split: str, mode: str, batch_size: int, shuffle: bool) -> DataLoader:
        common = dict(
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collator(mode),
            persistent_workers=self.num_workers > 0,
        )
        if split == "train":
            # resumes mid-epoch at the exact sample (its state goes into Lightning's checkpoints)
            return ResumableDataLoader(
                SampleDataset(self._need(split)), seed=self.seed, shuffle=shuffle, **common
            )
        return DataLoader(SampleDataset(self.evaluation_samples(split)), shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_mode, self.batch_size, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_mode, self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_mode, self.eval_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", "generate", self.eval_batch_size, False)

    # ---- naming ----------------------------------------------------------------------------------
    def benchmark(self, stage: str) -> str:
        """The benchmark evaluated at ``stage`` ("val" reads ``val_file``, others ``test_file``)."""
        return self.BENCHMARK or type(self).__name__.removesuffix("DataModule").lower()

    def eval_file_name(self, stage: str) -> str:
        """The lower-case file name read at ``stage`` ("" when none)."""
        return os.path.basename(str(self.files.get("val" if stage == "val" else "test") or "")).lower()


class GroundingDataModule(BaseDataModule):
    """Train/val/test files of one format -> collated batches.

    ``format`` names the reader (see :data:`univg.data.READERS`); the per-dataset subclasses fix it.
    ``eval_format``/``eval_image_root`` read ``val_file``/``test_file`` with another reader than
    the training file (e.g. MIG-Bench beside the stage-1 file; default: ``format``/``image_root``).
    Reader reports are printed as one line per file. Every other argument is
    :class:`BaseDataModule`'s.
    """

    FORMAT: ClassVar[str | None] = None

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_root: str | None = None,
        format: str | None = None,
        eval_format: str | None = None,
        eval_image_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.FORMAT is not None and format not in (None, self.FORMAT):
            raise ValueError(f"{type(self).__name__} reads format {self.FORMAT!r}, not {format!r}")
        self.format = self.FORMAT or format
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        if self.format is None and any(self.files.values()):
            raise ValueError("GroundingDataModule needs `format` (one of univg.data.READERS) to read files")
        self.image_root = image_root
        self.eval_format = eval_format
        self.eval_image_root = eval_image_root

    # ---- reading ---------------------------------------------------------------------------------

    def read_split(self, split: str) -> list[GroundingSample] | None:
        """The samples of ``split`` (``None`` when it has no file). Subclasses override this."""
        path = self.files[split]
        if path is None:
            return None
        if split == "train":
            fmt, root, degenerate = self.format, self.image_root, self.degenerate_boxes
        else:
            fmt = self.eval_format or self.format
            root = self.eval_image_root if self.eval_image_root is not None else self.image_root
            degenerate = "keep"
        samples = read_samples(
            path,
            fmt,
            image_root=root,
            skip_invalid=self.skip_invalid,
            degenerate=degenerate,
            **self.reader_options(split),
        )
        if samples.report is not None:
            print(f"[univg.data] {split}: {samples.report.summary()}")
        return samples

    def reader_options(self, split: str) -> dict[str, Any]:
        """Further keyword arguments of the reader of ``split`` (a subclass's own reader settings)."""
        return {}
