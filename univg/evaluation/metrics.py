"""Grounding metrics: Acc@0.5 per task, mean IoU, parse rates, MIG-Bench's AVG.

All boxes here are in the model frame (integers in [0, 1000) for Qwen2-VL); IoU is frame-free.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from univg.data.readers.mig_bench import MIG_TASKS


def task_id(task: str) -> int:
    """A stable id for a task name, the same on every process (for gathering across ranks)."""
    return zlib.crc32(task.encode()) & 0x7FFFFFFF


class GroundingMetrics(Metric):
    """Accumulates per-sample IoU, task and parse outcome; ``compute`` gives per-task accuracy.

    ``update(ious, tasks, strict_parsed, compat_ious=None, compat_parsed=None)``: ``ious`` [B] with
    the strict parser's IoU (0 where unparsable), ``tasks`` B names, ``strict_parsed`` [B] bool;
    optionally the compatible parser's IoU/parse flags. Works across processes (``cat`` reduction).

    >>> m = GroundingMetrics()
    >>> m.update(torch.tensor([0.9, 0.2, 0.6]), ["a", "a", "b"], torch.tensor([True, True, True]))
    >>> r = m.compute()
    >>> round(r["acc@0.5/a"], 3), r["acc@0.5/b"], round(r["acc@0.5"], 3), round(r["avg"], 3)
    (0.5, 1.0, 0.667, 0.75)
    """

    full_state_update = False

    def __init__(self, thresholds: Sequence[float] = (0.3, 0.5, 0.7), **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(thresholds)
        self.names: dict[int, str] = {}
        for name in ("iou", "task", "strict_ok", "compat_iou", "compat_ok"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        ious: torch.Tensor,
        tasks: Sequence[str],
        strict_parsed: torch.Tensor,
        compat_ious: torch.Tensor | None = None,
        compat_parsed: torch.Tensor | None = None,
    ) -> None:
        ids = []
        for t in tasks:
            i = task_id(t)
            self.names[i] = t
            ids.append(i)
        ious = torch.nan_to_num(ious.detach().float(), nan=0.0).to(self.device)
        self.iou.append(ious)
        self.task.append(torch.tensor(ids, dtype=torch.long, device=self.device))
        self.strict_ok.append(strict_parsed.detach().bool().to(self.device))
        self.compat_iou.append(
            (compat_ious if compat_ious is not None else ious).detach().float().to(self.device)
        )
        self.compat_ok.append(
            (compat_parsed if compat_parsed is not None else strict_parsed).detach().bool().to(self.device)
        )

    @staticmethod
    def _cat(x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x
        return torch.cat(x) if len(x) else torch.zeros(0)

    def compute(self) -> dict[str, float]:
        iou, task = self._cat(self.iou).float(), self._cat(self.task).long()
        strict_ok, compat_ok = self._cat(self.strict_ok).bool(), self._cat(self.compat_ok).bool()
        compat_iou = self._cat(self.compat_iou).float()
        n = int(iou.numel())
        out: dict[str, float] = {"count": float(n)}
        if n == 0:
            return out
        for th in self.thresholds:
            out[f"acc@{th}"] = float((iou >= th).float().mean())
        out["miou"] = float(iou.mean())
        out["parse_rate/strict"] = float(strict_ok.float().mean())
        out["parse_rate/compatible"] = float(compat_ok.float().mean())
        out["acc@0.5/compatible"] = float((compat_iou >= 0.5).float().mean())
        per_task = []
        for tid in sorted(set(task.tolist()), key=lambda i: self.names.get(i, str(i))):
            name = self.names.get(tid, f"task-{tid}")
            sel = task == tid
            acc = float((iou[sel] >= 0.5).float().mean())
            per_task.append(acc)
            out[f"acc@0.5/{name}"] = acc
            out[f"miou/{name}"] = float(iou[sel].mean())
            out[f"count/{name}"] = float(sel.sum())
        # Unweighted mean over the tasks present (the paper's AVG over MIG-Bench's 10 columns).
        out["avg"] = sum(per_task) / len(per_task)
        return out


def mig_avg(per_task_acc: dict[str, float]) -> float:
    """Unweighted mean of the 10 MIG-Bench column accuracies; raises if one is missing.

    >>> mig_avg({t: 0.5 for t in MIG_TASKS})
    0.5
    """
    missing = [t for t in MIG_TASKS if t not in per_task_acc]
    if missing:
        raise KeyError(f"MIG-Bench AVG needs all 10 tasks; missing {missing}")
    return sum(per_task_acc[t] for t in MIG_TASKS) / len(MIG_TASKS)


# ------------------------------------------------------------------------------------------------
# Evaluation over prediction records (the JSONL rows written by GroundingModule)
# ------------------------------------------------------------------------------------------------


def dedupe_records(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first record of each ``id``; returns (records, number of duplicates removed).

    Distributed evaluation pads the last batches by repeating samples, and a resumed run may meet
    records twice: every sample counts exactly once.

    >>> recs, dropped = dedupe_records([{"id": "a"}, {"id": "b"}, {"id": "a"}])
    >>> [r["id"] for r in recs], dropped
    (['a', 'b'], 1)
    """
    seen: set[str] = set()
    out, dropped = [], 0
    for r in records:
        if r["id"] in seen:
            dropped += 1
            continue
        seen.add(r["id"])
        out.append(r)
    return out, dropped


#: Parse -> (IoU key, parsed-box key) of a prediction record.
PARSE_KEYS: dict[str, tuple[str, str]] = {
    "strict": ("iou", "pred"),
    "compatible": ("iou_compatible", "pred_compatible"),
    "release": ("iou_release", "pred_release"),
}
PARSES: tuple[str, ...] = tuple(PARSE_KEYS)


def metrics_from_records(
    records: Sequence[dict[str, Any]],
    strict: bool = True,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    parse: str | None = None,
) -> dict[str, float]:
    """:meth:`GroundingMetrics.compute` over prediction records (one evaluation, no process sync).

    Each record needs ``task``, ``iou``/``pred`` (strict parser) and ``iou_compatible``/
    ``pred_compatible``; ``iou_release``/``pred_release`` (the release's scorer) when present.
    ``parse`` picks the headline ("strict", "compatible" or "release"; default from ``strict``):
    ``acc@*``, ``miou``, ``avg`` and the per-task columns are that parse's. The other parses are
    always reported beside it (``acc@0.5/compatible``, ``acc@0.5/release``, ``parse_rate/*``).

    >>> recs = [
    ...     {"task": "a", "iou": 0.9, "pred": [1, 1, 2, 2], "iou_compatible": 0.9, "pred_compatible": [1, 1, 2, 2]},
    ...     {"task": "a", "iou": 0.0, "pred": None, "iou_compatible": 0.6, "pred_compatible": [1, 1, 2, 2]},
    ...     {"task": "b", "iou": 0.4, "pred": [1, 1, 2, 2], "iou_compatible": 0.4, "pred_compatible": [1, 1, 2, 2]},
    ... ]
    >>> m = metrics_from_records(recs)
    >>> m["acc@0.5/a"], m["acc@0.5/b"], m["avg"], m["parse_rate/strict"], round(m["acc@0.5/compatible"], 3)
    (0.5, 0.0, 0.25, 0.6666666666666666, 0.667)
    >>> for r, iou in zip(recs, (0.0, 0.7, 0.6)):
    ...     r.update(iou_release=iou, pred_release=[1, 1, 2, 2] if iou else None)
    >>> m = metrics_from_records(recs, parse="release")
    >>> m["acc@0.5/a"], m["acc@0.5/b"], round(m["acc@0.5/release"], 3), round(m["parse_rate/release"], 3)
    (0.5, 1.0, 0.667, 0.667)
    """
    parse = parse or ("strict" if strict else "compatible")
    if parse not in PARSE_KEYS:
        raise ValueError(f"unknown parse {parse!r}; choose one of {PARSES}")
    metric = GroundingMetrics(thresholds=thresholds, sync_on_compute=False)
    if not records:
        return metric.compute()
    has_release = all("iou_release" in r for r in records)
    if parse == "release" and not has_release:
        raise ValueError("the release parse is the headline but some prediction records have no iou_release")
    key, pkey = PARSE_KEYS[parse]
    metric.update(
        torch.tensor([float(r[key]) for r in records]),
        [r["task"] for r in records],
        torch.tensor([r[pkey] is not None for r in records]),
        torch.tensor([float(r["iou_compatible"]) for r in records]),
        torch.tensor([r["pred_compatible"] is not None for r in records]),
    )
    out = metric.compute()
    # each parse's own rate and Acc@0.5, whichever parse is the headline
    n = len(records)
    out["parse_rate/strict"] = sum(r["pred"] is not None for r in records) / n
    out["acc@0.5/strict"] = sum(float(r["iou"]) >= 0.5 for r in records) / n
    if has_release:
        out["parse_rate/release"] = sum(r["pred_release"] is not None for r in records) / n
        out["acc@0.5/release"] = sum(float(r["iou_release"]) >= 0.5 for r in records) / n
        out["miou/release"] = sum(float(r["iou_release"]) for r in records) / n
    return out
