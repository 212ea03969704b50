"""The rehearsal's measurements, read back from a run, and its invariants: each a function of the
recorded values alone, so a test can inject a fault into them and see it reported."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from univg.rehearsal.inputs import Plan

#: Bounds of the invariants by the precision of the policy's compute (bf16 under the FSDP config).
#: Two bf16 computations of the same log-prob (the sampler's cached decoding, a scoring forward)
#: differ by the rounding of logits (8 mantissa bits: ~0.06 at a logit of 15, per computation);
#: the warm-started stand-in's logits reach ~15-20, where 0.07-0.11 nats were measured. A
#: repetition penalty of 1.05 moves a logit of 10 by 0.48; a leaked top-k 1 moves log-probs to 0.
BOUNDS = {
    "load_logit_diff": 0.0,
    "kl_max": 1e-6,
    "ref_logp_absdiff_max": 1e-6,
    "sampler_gap_max": 0.25,
    "sampled_absdiff_max": 0.25,
    "lr": 1e-12,
    "phi": 1e-6,
    "eval_iou": 1e-9,
}


# --------------------------------------------------------------------------------- measurements
def _jsonl(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def _schedule_settings(config: Path) -> dict[str, Any]:
    """The lr schedule's and the sampling's settings as the stage ran them (LightningCLI's
    ``config.yaml``)."""
    import yaml

    if not config.is_file():
        return {}
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    keys = ("lr", "schedule", "warmup_ratio", "min_lr_ratio", "temperature", "top_k", "top_p")
    return {k: args.get(k) for k in keys if k in args}


def _trainer_state(ckpt_path: Path) -> dict[str, Any]:
    """Optimiser steps taken, lr now and the scheduler's peak lr from a Lightning checkpoint
    (file or sharded folder)."""
    path = ckpt_path / "meta.pt" if ckpt_path.is_dir() else ckpt_path
    if not path.is_file():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    sched = state["lr_schedulers"][0]
    return {
        "global_step": int(state["global_step"]),
        "lr_last": float(sched["_last_lr"][0]),
        "lr_peak": float(sched["base_lrs"][0]),
    }


def measure(out: Path, plan: Plan, ckpt: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Everything :func:`check_measurements` checks, read from the run's outputs in ``out``."""
    from univg.model.backbone import BackboneSpec

    loaded = BackboneSpec(preset="tiny", checkpoint=str(ckpt)).build().eval()
    ids = torch.tensor([[151644, 872, 198, 9707, 11, 1879, 0]])
    with torch.no_grad():
        diff = float((model.eval()(input_ids=ids).logits - loaded(input_ids=ids).logits).abs().max())
    stage2 = out / "stage2" / "version_0"
    probe = _jsonl(stage2 / "probe.jsonl")
    return {
        "plan": {"stage1_steps": plan.stage1_steps, "stage2_steps": plan.stage2_steps, "procs": plan.procs},
        "load_logit_diff": diff,
        "stage1": {
            **_trainer_state(out / "stage1" / "version_0" / "checkpoints" / "last.ckpt"),
            "config": _schedule_settings(out / "stage1" / "version_0" / "config.yaml"),
        },
        "stage2": {
            "records": _jsonl(stage2 / "invariants.jsonl"),
            "probe_steps": [r for r in probe if r.get("kind") == "step"],
            "weights": next((r for r in probe if r.get("kind") == "weights"), None),
            "config": _schedule_settings(stage2 / "config.yaml"),
        },
        "eval_rows": _jsonl(out / "eval" / "version_0" / "predictions_test.jsonl"),
    }


def expected_lr(
    step: int, total: int, peak: float, schedule: str, warmup_ratio: float, min_ratio: float
) -> float:
    """The lr of optimiser step ``step`` (0-based) of a run of ``total`` steps, as the modules'
    schedule is documented: linear warm-up over ceil(warmup_ratio x total) steps (step 0 at
    1 / warm-up of the peak), then constant, or cosine or linear decay from the peak to
    ``min_ratio`` x peak at step ``total``.

    >>> [expected_lr(s, 2, 1.0, "linear", 0.0, 0.0) for s in range(3)]
    [1.0, 0.5, 0.0]
    >>> [round(expected_lr(s, 4, 1.0, "cosine", 0.5, 0.0), 3) for s in range(5)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - done if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
    return peak * (min_ratio + (1.0 - min_ratio) * shape)


# --------------------------------------------------------------------------------- checks
class Missing(KeyError):
    """A measurement an invariant needs was not recorded."""


def _need(record: dict[str, Any] | None, key: str, where: str) -> Any:
    if not isinstance(record, dict) or record.get(key) is None:
        raise Missing(f"no {key!r} in {where}")
    return record[key]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _records(m: dict[str, Any]) -> list[dict[str, Any]]:
    records = _need(_need(m, "stage2", "the measurements"), "records", "stage 2")
    if not records:
        raise Missing("no stage 2 invariants.jsonl records")
    return records


def _probe_steps(m: dict[str, Any]) -> list[dict[str, Any]]:
    steps = _need(_need(m, "stage2", "the measurements"), "probe_steps", "stage 2")
    if not steps:
        raise Missing("no stage 2 probe.jsonl step records")
    return steps


def _ranks(m: dict[str, Any], key: str) -> list[tuple[int, int, Any]]:
    """(step, rank, value of ``key``) for every rank of every probe step."""
    out = []
    for i, step in enumerate(_probe_steps(m)):
        for r in _need(step, "ranks", f"probe step {i}"):
            out.append((i, r.get("rank"), _need(r, key, f"probe step {i}, rank {r.get('rank')}")))
    return out


def _schedule(cfg: dict[str, Any], where: str) -> tuple[float, str, float, float]:
    return (
        float(_need(cfg, "lr", where)),
        str(_need(cfg, "schedule", where)),
        float(_need(cfg, "warmup_ratio", where)),
        float(_need(cfg, "min_lr_ratio", where)),
    )


def _check_load(m: dict[str, Any]) -> tuple[bool, str]:
    diff = _need(m, "load_logit_diff", "the measurements")
    return _finite(diff) and diff <= BOUNDS["load_logit_diff"], f"{diff:.3g}"


def _check_stage1_schedule(m: dict[str, Any]) -> tuple[bool, str]:
    s1 = _need(m, "stage1", "the measurements")
    peak_cfg, schedule, warmup, floor = _schedule(_need(s1, "config", "stage 1"), "stage 1's config.yaml")
    steps, lr_last, peak = (
        _need(s1, k, "stage 1's checkpoint") for k in ("global_step", "lr_last", "lr_peak")
    )
    planned = m["plan"]["stage1_steps"]
    # after the last of its steps the schedule stands at step `steps` of `steps`
    want = expected_lr(steps, steps, peak_cfg, schedule, warmup, floor)
    ok = steps == planned and peak == peak_cfg and abs(lr_last - want) <= BOUNDS["lr"] * peak_cfg
    return ok, (
        f"{steps} steps (planned {planned}), lr after the last {lr_last:.3g} ({schedule} over {steps} steps: "
        f"{want:.3g}), peak {peak:.3g} (config {peak_cfg:.3g})"
    )


def _check_stage2_steps(m: dict[str, Any]) -> tuple[bool, str]:
    planned = m["plan"]["stage2_steps"]
    n, p = len(_records(m)), len(_probe_steps(m))
    return n == planned and p == planned, f"module {n}, probe {p}, planned {planned}"


def _check_kl(m: dict[str, Any]) -> tuple[bool, str]:
    kl = _need(_records(m)[0], "kl_max", "the first step's invariants")
    return _finite(kl) and kl <= BOUNDS["kl_max"], f"max per token {kl:.3g} (bound {BOUNDS['kl_max']:g})"


def _check_ref_logp(m: dict[str, Any]) -> tuple[bool, str]:
    d = _need(_records(m)[0], "ref_logp_absdiff_max", "the first step's invariants")
    return _finite(d) and d <= BOUNDS["ref_logp_absdiff_max"], f"max |delta| {d:.3g}"


def _check_sampler_gap(m: dict[str, Any]) -> tuple[bool, str]:
    gaps = [_need(r, "sampler_gap_max", f"step {i}'s invariants") for i, r in enumerate(_records(m))]
    ok = all(_finite(g) for g in gaps) and max(gaps) <= BOUNDS["sampler_gap_max"]
    return ok, f"{max(gaps):.3g} nats (bound {BOUNDS['sampler_gap_max']:g} in bf16)"


def _check_sampled_distribution(m: dict[str, Any]) -> tuple[bool, str]:
    cfg = _need(_need(m, "stage2", "the measurements"), "config", "stage 2")
    asked = {k: _need(cfg, k, "stage 2's config.yaml") for k in ("temperature", "top_k", "top_p")}
    used = [v for _, _, v in _ranks(m, "sampling")]  # what the probe recomputed with
    diffs = [v for _, _, v in _ranks(m, "sampled_absdiff_max")]
    tokens = sum(v for _, _, v in _ranks(m, "sampled_tokens"))
    worst = max(v if _finite(v) else math.inf for v in diffs)
    ok = tokens > 0 and worst <= BOUNDS["sampled_absdiff_max"] and all(u == asked for u in used)
    return ok, (
        f"{worst:.3g} nats over {tokens} tokens (bound {BOUNDS['sampled_absdiff_max']:g} in bf16); "
        f"sampling {used[0] if all(u == used[0] for u in used) else used} (config {asked})"
    )


def _check_stage2_schedule(m: dict[str, Any]) -> tuple[bool, str]:
    records = _records(m)
    peak, schedule, warmup, floor = _schedule(
        _need(m["stage2"], "config", "stage 2"), "stage 2's config.yaml"
    )
    total = len(records)  # the optimiser steps the run made
    want = [expected_lr(i, total, peak, schedule, warmup, floor) for i in range(total)]
    got = [float(_need(r, "lr", f"step {i}'s invariants")) for i, r in enumerate(records)]
    err = max(abs(a - b) for a, b in zip(got, want))
    return err <= BOUNDS["lr"] * peak, (
        f"lrs {[f'{x:.3g}' for x in got]}; {schedule} over the {total} steps made: {[f'{x:.3g}' for x in want]}"
    )


def phi_reference(name: str, miou: list[float], eps: float) -> list[float]:
    """phi per group written out from the definitions (m: the group's mean IoU, clamped to [0, 1],
    NaN read as 0): none 1, exp e^(1 - m), square (1 - m)^2, neglog -log(m + eps), power 1.05 - m.

    >>> [round(w, 4) for w in phi_reference("exp", [0.0, 0.5, 1.0], 0.02)]
    [2.7183, 1.6487, 1.0]
    """
    forms: dict[str, Callable[[float], float]] = {
        "none": lambda x: 1.0,
        "exp": lambda x: math.exp(1.0 - x),
        "square": lambda x: (1.0 - x) ** 2,
        "neglog": lambda x: -math.log(x + eps),
        "power": lambda x: 1.05 - x,
    }
    if name not in forms:
        raise Missing(f"no written-out phi {name!r}")
    return [forms[name](0.0 if math.isnan(x) else min(1.0, max(0.0, x))) for x in miou]


def _check_phi(m: dict[str, Any]) -> tuple[bool, str]:
    worst, groups = 0.0, 0
    for i, r in enumerate(_records(m)):
        where = f"step {i}'s invariants"
        miou, used = _need(r, "miou", where), _need(r, "weights", where)
        want = phi_reference(_need(r, "phi", where), miou, float(r.get("phi_eps", 0.0)))
        if r.get("normalize_phi") and sum(want) > 0:
            want = [w * len(want) / sum(want) for w in want]
        diffs = [abs(a - b) for a, b in zip(used, want)] if len(used) == len(want) else [math.inf]
        worst = max([worst, *diffs])
        groups += len(miou)
    world = _records(m)[0].get("world_size")
    return groups > 0 and worst <= BOUNDS[
        "phi"
    ], f"max |delta| {worst:.3g} over {groups} groups from {world} ranks"


def _check_groups_differ(m: dict[str, Any]) -> tuple[bool, str]:
    miou = [x for i, r in enumerate(_records(m)) for x in _need(r, "miou", f"step {i}'s invariants")]
    phi = [x for i, r in enumerate(_records(m)) for x in _need(r, "weights", f"step {i}'s invariants")]
    ok = bool(miou) and max(miou) > min(miou) and max(phi) > min(phi)
    return ok, f"mIoU {[round(x, 3) for x in miou]}, phi {[round(x, 3) for x in phi]}"


def _check_advantages(m: dict[str, Any]) -> tuple[bool, str]:
    best: dict[Any, float] = {}
    for _, rank, a in _ranks(m, "adv_abs_mean"):
        best[rank] = max(best.get(rank, 0.0), a if _finite(a) else 0.0)
    world = int(m["plan"]["procs"])
    ok = sorted(best) == list(range(world)) and all(v > 0 for v in best.values())
    return ok, ", ".join(f"rank {k} {v:.3g}" for k, v in sorted(best.items(), key=lambda kv: str(kv[0])))


def _check_grad_norm(m: dict[str, Any]) -> tuple[bool, str]:
    norms = [_need(s, "grad_norm", f"probe step {i}") for i, s in enumerate(_probe_steps(m))]
    return all(_finite(n) and n > 0 for n in norms), f"{[f'{n:.3g}' for n in norms]}"


def _check_weights_change(m: dict[str, Any]) -> tuple[bool, str]:
    w = _need(_need(m, "stage2", "the measurements"), "weights", "stage 2's probe")
    delta = _need(w, "max_abs_delta", "the weights probe")
    rel = _need(w, "rel_l2", "the weights probe")
    ok = _finite(delta) and delta > 0 and _finite(rel) and rel > 0
    return ok, f"max |delta| {delta:.3g}, relative L2 {rel:.3g} over {w.get('params')} parameters"


def _check_eval_iou(m: dict[str, Any]) -> tuple[bool, str]:
    from univg.rl.rewards import iou_reward

    rows = _need(m, "eval_rows", "the measurements")
    scored = [r for r in rows if r.get("gt")]
    mism = sum(
        abs(iou_reward([r["completion"]], [r["gt"]], strict=True)[0] - (r["iou"] or 0.0)) > BOUNDS["eval_iou"]
        for r in scored
    )
    parsed = sum(r.get("pred") is not None for r in rows)
    ok = bool(scored) and mism == 0 and parsed > 0
    return (
        ok,
        f"{len(rows)} predictions, {mism} differ, {parsed} parsed, {sum((r.get('iou') or 0) > 0 for r in rows)} with IoU > 0",
    )


#: Each invariant: its name and the check of the measurements (:func:`measure`) that decides it.
#: tests/test_rehearsal_faults.py injects the fault each one is there to catch and sees it fail.
CHECKS: tuple[tuple[str, Callable[[dict[str, Any]], tuple[bool, str]]], ...] = (
    ("4.x checkpoint folder loads as the stand-in (max |logit diff|)", _check_load),
    ("stage 1 schedule: its optimiser steps, at the schedule's floor after the last", _check_stage1_schedule),
    ("stage 2 optimiser steps", _check_stage2_steps),
    ("KL(policy || reference) at the first step", _check_kl),
    ("policy vs reference log-probs at the first step", _check_ref_logp),
    (
        "scored log-prob at most the sampled one (max scored - sampled; top-k only raises the sampled)",
        _check_sampler_gap,
    ),
    (
        "sampled distribution is the configured one (max |recorded - recomputed sampled log-prob|)",
        _check_sampled_distribution,
    ),
    ("stage 2 lr at each step: the config's schedule over the steps made", _check_stage2_schedule),
    ("phi per group over the ranks == phi(group mIoU) written out", _check_phi),
    ("stage 2 groups differ in mIoU and phi", _check_groups_differ),
    ("non-zero advantages on every rank (largest mean |A| per rank)", _check_advantages),
    ("gradient norm > 0 at every stage 2 step (after clipping)", _check_grad_norm),
    ("policy weights change over stage 2 (trainable parameters)", _check_weights_change),
    ("evaluation IoU == reward IoU on every prediction, some parsed", _check_eval_iou),
)


def check_measurements(m: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Each invariant as (name, passed, measured value), from the measurements alone; a missing
    measurement fails its invariant, naming what is missing.

    Each invariant is shown failing on its fault in tests/test_rehearsal_faults.py (a penalty or
    processor in generation, a wrong phi, evaluation IoU off the reward's, KL at the first step, a
    schedule of the wrong length, a stage 2 without advantages, gradient or weight change, ...);
    a stage 2 whose groups all score 0 fails the last five stage-2 ones end to end.
    """
    out = []
    for name, check in CHECKS:
        try:
            ok, measured = check(m)
        except Missing as e:
            ok, measured = False, f"missing measurement: {e.args[0]}"
        out.append((name, bool(ok), measured))
    return out


def report(m: dict[str, Any]) -> str:
    """What stage 2 did, step by step: advantages per rank, gradient norm, groups, weight change."""
    lines = []
    warm = m.get("warm_start")
    if warm:
        lines.append(
            f"warm start of the stand-in: loss {warm['loss_first']:.2f} -> {warm['loss_last']:.2f} "
            f"({warm['seconds']:.0f} s)"
        )
    records = m.get("stage2", {}).get("records") or []
    for i, step in enumerate(m.get("stage2", {}).get("probe_steps") or []):
        ranks = step.get("ranks", [])
        adv = ", ".join(f"rank {r['rank']} {r['adv_abs_mean']:.3f}" for r in ranks)
        line = (
            f"stage 2 step {i}: mean |A| {adv}; grad norm {step.get('grad_norm_unclipped', float('nan')):.3g}"
            f" ({step.get('grad_norm', float('nan')):.3g} after clipping)"
        )
        if i < len(records):
            r = records[i]
            line += f"; group mIoU {[round(x, 3) for x in r.get('miou', [])]}, phi {[round(x, 3) for x in r.get('weights', [])]}"
        lines.append(line)
        for r in ranks:
            for text in r.get("completions", [])[:1]:
                lines.append(f"  rank {r['rank']} completion: {text[:120]!r}")
    w = m.get("stage2", {}).get("weights")
    if w:
        lines.append(
            f"stage 2 weight change: max |delta| {w['max_abs_delta']:.3g}, relative L2 {w['rel_l2']:.3g} "
            f"({w['params']} trainable parameters)"
        )
    return "\n".join(f"univg rehearsal: {line}" for line in lines)
