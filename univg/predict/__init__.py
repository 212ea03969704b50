"""Ground an instruction in your own images: print the reasoning and the box, save the picture.

    python -m univg.predict --images a.jpg b.jpg --instruction "Find the dog of image 1 in the second image." \\
        --checkpoint GD-ML/UniVG-R1 --out predictions/

prints the model's reasoning, its answer in the model frame and the box in pixels of the target
image, and saves ``<out>/pictures_predict/user-0.png`` with the box drawn. The same through the
Lightning CLI (any module config, e.g. a trained run's):

    python -m univg predict --config configs/eval/predict.yaml \\
        --data.init_args.images '[a.jpg, b.jpg]' --data.init_args.instruction "..."

The target image (the one the box is in) is ``--target-index`` (0-based), else the last image the
instruction names ("in the second image", "image-2"), else the only or the last image.

Without ``--checkpoint`` or ``--init-checkpoint`` it refuses (exit 2) before building anything:
an untrained model answers nonsense, and the 7B preset alone is ~33 GB in fp32. ``--random-weights``
runs one anyway (for trying the pipeline).

The backbone (preset, sizes, LoRA) of a univg checkpoint (``--init-checkpoint RUN/.../last.ckpt``)
is read from the ``config.yaml`` LightningCLI saved in its run folder (``--config`` names it when the
checkpoint was moved), never guessed: a checkpoint of the demo's tiny model loads as that model.
``--preset`` is for ``--checkpoint`` (a Hugging Face folder or hub id) and ``--random-weights``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.data.datamodules import GroundingDataModule
from univg.data.readers.questions import image_mentions
from univg.model.backbone import BackboneSpec


def target_index_for(instruction: str, n_images: int, target_index: int | None = None) -> int:
    """Which image the box is asked in (0-based).

    >>> target_index_for("locate it in the second image", 3), target_index_for("where?", 3), target_index_for("x", 3, -1)
    (1, 2, 2)
    """
    if target_index is not None:
        if not -n_images <= target_index < n_images:
            raise ValueError(f"target_index {target_index} is out of range for {n_images} images")
        return target_index % n_images
    named = [i for i, _ in image_mentions(instruction) if 0 <= i < n_images]
    return named[-1] if named else n_images - 1


def user_sample(
    images: Sequence[str], instruction: str, target_index: int | None = None, sample_id: str = "user-0"
) -> GroundingSample:
    """A sample without ground truth (``meta["no_gt"]``; its box is a placeholder never scored)."""
    if not images:
        raise ValueError("predict needs at least one image")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"image(s) not found: {missing}")
    idx = target_index_for(instruction, len(images), target_index)
    return GroundingSample(
        id=sample_id,
        task="user",
        images=[os.path.abspath(p) for p in images],
        target_index=idx,
        question=instruction,
        box=Box(0.0, 0.0, 1.0, 1.0),
        source="<user>",
        index=0,
        target_rule="user" if target_index is not None else "instruction-or-last",
        meta={"no_gt": True},
    )


class UserImagesDataModule(GroundingDataModule):
    """One user question over ``images`` for ``Trainer.predict`` (read as the test split)."""

    def __init__(
        self,
        images: list[str],
        instruction: str,
        target_index: int | None = None,
        prompt_template: str = "reasoning",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        processor_path: str | None = None,
        frame: str = "qwen2-vl",
    ) -> None:
        kw: dict[str, Any] = {} if min_pixels is None else {"min_pixels": min_pixels}
        super().__init__(
            prompt_template=prompt_template,
            max_pixels=max_pixels,
            processor_path=processor_path,
            frame=frame,
            **kw,
        )
        self.user = (list(images), instruction, target_index)

    def read_split(self, split: str) -> list[GroundingSample] | None:
        if split != "test":
            return None
        return [user_sample(*self.user)]


def predict_backbone(
    init_checkpoint: str | None,
    config: str | None,
    preset: str | None,
    checkpoint: str | None,
    dtype: str,
) -> BackboneSpec:
    """What to build: a univg checkpoint's own backbone from its run's ``config.yaml`` (``config``,
    else found beside ``init_checkpoint``), else ``preset`` (default qwen2-vl-7b) over ``checkpoint``."""
    from univg.model.run_config import backbone_of, read_config, run_directory

    if init_checkpoint is not None or config is not None:
        if config is None:
            if not os.path.exists(init_checkpoint):
                raise FileNotFoundError(f"--init-checkpoint {init_checkpoint} does not exist")
            run = run_directory(init_checkpoint)
            if run is None:
                raise FileNotFoundError(
                    f"no config.yaml beside or above {init_checkpoint}: pass the run's config with --config "
                    "(LightningCLI saves it in the run folder)"
                )
            config = str(run / "config.yaml")
        if not os.path.isfile(config):
            raise FileNotFoundError(f"--config {config} does not exist")
        if preset is not None:
            raise ValueError(f"--preset {preset}: the run's config ({config}) says which model this is")
        spec = backbone_of(read_config(config), config)
        if checkpoint is not None:
            spec.checkpoint = checkpoint
        spec.dtype = dtype  # type: ignore[assignment]
        return spec
    return BackboneSpec(preset=preset or "qwen2-vl-7b", checkpoint=checkpoint, dtype=dtype)
