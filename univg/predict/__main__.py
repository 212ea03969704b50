"""Ground an instruction in your own images: print the reasoning and the box, save the picture.

``python -m univg.predict --images ... --instruction ...`` (see :mod:`univg.predict`): builds a
:class:`~univg.modules.base.GroundingModule` over the given weights and runs ``Trainer.predict``
on :class:`~univg.predict.UserImagesDataModule`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from univg.core.errors import entry_point
from univg.core.help_text import with_examples
from univg.predict import UserImagesDataModule, predict_backbone

NO_WEIGHTS = (
    "univg.predict: error: no weights given: pass --checkpoint (a Hugging Face folder or hub id, e.g. "
    "GD-ML/UniVG-R1) or --init-checkpoint (a univg .ckpt); --random-weights predicts with an untrained model"
)


@entry_point("univg.predict")
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``python -m univg.predict``; returns the prediction rows (also printed). Bad input (an image,
    a checkpoint, a config) ends as one ``univg.predict: error:`` line, exit status 2."""
    import lightning as L

    from univg.modules.base import GroundingModule

    p = argparse.ArgumentParser(
        prog="python -m univg.predict",
        description=__doc__.splitlines()[0],
        **with_examples(
            'python -m univg.predict --images a.jpg b.jpg --instruction "the cup that is in both pictures" --checkpoint DIR',
            'python -m univg.predict --images a.jpg --instruction "the red box" --init-checkpoint runs/demo/stage1.ckpt',
        ),
    )
    p.add_argument("--images", nargs="+", required=True, help="image files, in order")
    p.add_argument("--instruction", required=True)
    p.add_argument("--target-index", type=int, default=None, help="0-based image the box is in")
    p.add_argument(
        "--preset",
        default=None,
        help="backbone preset (default qwen2-vl-7b; a run's own with --init-checkpoint)",
    )
    p.add_argument("--checkpoint", default=None, help="Hugging Face directory or hub id of the weights")
    p.add_argument("--init-checkpoint", default=None, help="a univg Lightning .ckpt instead")
    p.add_argument(
        "--config", default=None, help="the run's config.yaml (default: found beside --init-checkpoint)"
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="predict with an untrained model of --preset (no weights given: for trying the pipeline)",
    )
    p.add_argument("--template", default="reasoning", help="prompt template (univg.core.prompts.PROMPTS)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", default="predictions", help="pictures go to <out>/pictures_predict/")
    args = p.parse_args(argv)
    if args.checkpoint is None and args.init_checkpoint is None and not args.random_weights:
        # refuse before anything is built: an untrained model answers nonsense at full model cost
        print(NO_WEIGHTS, file=sys.stderr)
        raise SystemExit(2)
    try:
        backbone = predict_backbone(
            args.init_checkpoint, args.config, args.preset, args.checkpoint, args.dtype
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"univg.predict: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    module = GroundingModule(
        backbone=backbone,
        init_checkpoint=args.init_checkpoint,
        max_new_tokens=args.max_new_tokens,
        pictures_dir=os.path.join(args.out, "pictures_predict"),
    )
    data = UserImagesDataModule(
        args.images,
        args.instruction,
        args.target_index,
        prompt_template=args.template,
        max_pixels=args.max_pixels,
        processor_path=args.checkpoint,
    )
    trainer = L.Trainer(
        accelerator="auto", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(module, datamodule=data) or []
    return [r for batch in batches for r in batch]


if __name__ == "__main__":  # pragma: no cover
    main()
