"""Seeded mixtures of sources, for custom mixes (ablations such as Table 4's 21k rows).

The stage configs do not use it: they read the release's files whole (``stage1_cotsft.json``
already holds both stage-1 sources, ``stage2_rl.json`` both stage-2 ones; records are told apart
per record). Use a mixture to draw other counts or to add files.

A source is a dict (YAML mapping)::

    {format: cot_sft, path: data/stage1_cotsft.json, count: 76000,    # or ratio: 0.5 of the file
     prompt_template: reasoning, image_root: data/images, replacement: false, name: mgrounding_cot,
     source_kind: mgrounding}    # optional: only the records detected as this source (release files)

Each source is drawn **without replacement** with its own ``random.Random((seed, index))`` (so
adding a source does not change another's draw); ``replacement: true`` draws with replacement,
which is also the only way to ask for more samples than a file has. A source's
``prompt_template`` overrides the module's template for its samples (unless a sample already
carries its own). The draw is shuffled together and a table of what was drawn per source and task
is printed.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from univg.core.sample_types import GroundingSample
from univg.data.datamodules import BaseDataModule
from univg.data.readers import read_samples
from univg.data.readers.sources import SOURCE_KINDS

_SOURCE_KEYS = {
    "format",
    "path",
    "count",
    "ratio",
    "prompt_template",
    "image_root",
    "replacement",
    "name",
    "reader",
    "source_kind",
}


def _check_source(i: int, src: Mapping[str, Any]) -> None:
    unknown = set(src) - _SOURCE_KEYS
    if unknown:
        raise ValueError(
            f"mixture source {i}: unknown keys {sorted(unknown)}; allowed {sorted(_SOURCE_KEYS)}"
        )
    for key in ("format", "path"):
        if key not in src:
            raise ValueError(f"mixture source {i}: missing '{key}'")
    if "source_kind" in src and src["source_kind"] not in SOURCE_KINDS:
        raise ValueError(
            f"mixture source {i} ({src['path']}): source_kind must be one of {SOURCE_KINDS}, "
            f"got {src['source_kind']!r}"
        )
    if ("count" in src) == ("ratio" in src):
        raise ValueError(f"mixture source {i} ({src['path']}): give exactly one of 'count' or 'ratio'")


def draw_source(
    samples: Sequence[GroundingSample], count: int, rng: random.Random, replacement: bool, where: str
) -> list[GroundingSample]:
    """``count`` samples: without replacement (a seeded sample) unless ``replacement``."""
    if count < 0:
        raise ValueError(f"{where}: count must be >= 0, got {count}")
    if replacement:
        if count and not samples:
            raise ValueError(f"{where}: cannot draw {count} from an empty source")
        return [samples[rng.randrange(len(samples))] for _ in range(count)]
    if count > len(samples):
        raise ValueError(
            f"{where}: asked for {count} samples but the source has {len(samples)}; "
            "lower the count or set replacement: true"
        )
    return rng.sample(list(samples), count)


def draw_mixture(
    sources: Sequence[Mapping[str, Any]],
    seed: int = 0,
    skip_invalid: bool = False,
    loaded: Mapping[int, Sequence[GroundingSample]] | None = None,
    shuffle: bool = True,
    verbose: bool = True,
    degenerate: str = "keep",
) -> tuple[list[GroundingSample], str]:
    """Draw each source's count (or ratio of its file), tag samples, return (samples, table).

    ``degenerate`` is the readers' box policy (training mixtures pass the module's
    ``degenerate_boxes``).

    ``loaded`` supplies already-read samples by source index (tests, in-memory data). Each drawn
    sample records its source in ``meta["mixture_source"]``; sampling with replacement gives
    repeated samples new ids ``<id>#<k>`` so ids stay unique.
    """
    drawn: list[GroundingSample] = []
    rows: list[tuple[str, str, int, int, dict[str, int]]] = []
    for i, src in enumerate(sources):
        _check_source(i, src)
        name = str(src.get("name") or f"{src['format']}:{src['path']}")
        if loaded is not None and i in loaded:
            pool = list(loaded[i])
        else:
            pool = read_samples(
                src["path"],
                src["format"],
                image_root=src.get("image_root"),
                skip_invalid=skip_invalid,
                degenerate=degenerate,
            )
            if verbose and pool.report is not None:
                print(f"[univg.data] mixture source {i}: {pool.report.summary()}")
        if "source_kind" in src:
            pool = [s for s in pool if s.meta.get("source_kind") == src["source_kind"]]
        count = int(src["count"]) if "count" in src else round(float(src["ratio"]) * len(pool))
        rng = random.Random(f"{seed}/{i}")  # str seeds are hashed deterministically (not by PYTHONHASHSEED)
        picked = draw_source(
            pool, count, rng, bool(src.get("replacement", False)), f"mixture source {i} ({name})"
        )
        seen: collections.Counter[str] = collections.Counter()
        for s in picked:
            new_id = s.id if not seen[s.id] else f"{s.id}#{seen[s.id]}"
            seen[s.id] += 1
            template = s.prompt_template or src.get("prompt_template")
            drawn.append(
                replace(s, id=new_id, prompt_template=template, meta={**s.meta, "mixture_source": name})
            )
        rows.append(
            (
                name,
                str(src["format"]),
                len(pool),
                len(picked),
                dict(collections.Counter(s.task for s in picked)),
            )
        )
    if shuffle:
        random.Random(f"{seed}/shuffle").shuffle(drawn)
    table = mixture_table(rows)
    if verbose:
        print(table)
    return drawn, table


def mixture_table(rows: Sequence[tuple[str, str, int, int, Mapping[str, int]]]) -> str:
    """A plain-text table: one line per source (available, drawn), then per task, then the total."""
    lines = [f"{'source':<40} {'format':<10} {'available':>9} {'drawn':>7}  tasks"]
    total = 0
    for name, fmt, available, n, tasks in rows:
        task_text = ", ".join(f"{t} {c}" for t, c in sorted(tasks.items()))
        lines.append(f"{name[:40]:<40} {fmt:<10} {available:>9} {n:>7}  {task_text}")
        total += n
    lines.append(f"{'total':<40} {'':<10} {'':>9} {total:>7}")
    return "\n".join(lines)


class MixtureDataModule(BaseDataModule):
    """Train on a seeded mixture of ``sources``; optional val/test sources (drawn the same way).

    For custom mixes (the stage configs read the release's files whole instead). Example, Table 4's
    21k CoT row drawn from the stage-1 file by detected source::

        data:
          class_path: univg.data.MixtureDataModule
          init_args:
            sources:
              - {format: cot_sft, path: data/stage1_cotsft.json, count: 18000, source_kind: mgrounding}
              - {format: cot_sft, path: data/stage1_cotsft.json, count: 3000, source_kind: coco}
            target_format: auto
    """

    def __init__(
        self,
        sources: list[dict[str, Any]],
        val_sources: list[dict[str, Any]] | None = None,
        test_sources: list[dict[str, Any]] | None = None,
        target_format: str = "auto",
        **kwargs: Any,
    ) -> None:
        """The sources of each split (each names its own file) and its own default target format;
        every other argument is :class:`BaseDataModule`'s."""
        super().__init__(target_format=target_format, **kwargs)
        for i, src in enumerate(sources):
            _check_source(i, src)  # fail at construction, not after minutes of reading
        self.sources = {"train": list(sources), "val": val_sources, "test": test_sources}
        self.tables: dict[str, str] = {}

    def read_split(self, split: str) -> list[GroundingSample] | None:
        sources = self.sources[split]
        if not sources:
            return None
        print(f"[univg.data] {split} mixture (seed {self.seed}):")
        degenerate = self.degenerate_boxes if split == "train" else "keep"  # as the file modules
        samples, self.tables[split] = draw_mixture(
            sources, seed=self.seed, skip_invalid=self.skip_invalid, degenerate=degenerate
        )
        return samples
