"""The report of :mod:`grpo_learning`'s runs: the probe curves and final numbers as a markdown
table, the verdict in words (does each framework learn; is ours within the seed spread of TRL),
and the figure.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

FRAMEWORKS = ("ours", "trl")
#: The reward-probe number the curves show: mean IoU of the sampled completions (accuracy reward).
CURVE = "accuracy"


# ------------------------------------------------------------------------------------------ report
def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def curve(run: dict[str, Any]) -> dict[int, float]:
    return {int(p["step"]): p[CURVE] for p in run["probe"]}


#: The per-step KL to the reference (k3 estimator, mean over completions) in each framework's logs.
KL_KEY = {"ours": "train/kl", "trl": "kl"}


def last_kl(framework: str, run: dict[str, Any]) -> float | None:
    """KL to the reference at the last optimiser step: how far the updates moved the policy."""
    vals = [s[KL_KEY[framework]] for s in run["steps"] if KL_KEY[framework] in s]
    return vals[-1] if vals else None


def table(runs: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    """Markdown: probe IoU per step (mean over seeds, then every seed) with the mean KL to the
    reference at that step, then each run's final numbers."""
    curves = {f: {s: curve(runs[f"{f}/{s}"]) for s in seeds if f"{f}/{s}" in runs} for f in FRAMEWORKS}
    kls = {
        f: {
            s: {int(x["step"]): x[KL_KEY[f]] for x in runs[f"{f}/{s}"]["steps"] if KL_KEY[f] in x}
            for s in curves[f]
        }
        for f in FRAMEWORKS
    }
    steps = sorted({st for c in curves.values() for v in c.values() for st in v})
    head = ["step", "ours mean", "TRL mean"]
    head += [f"ours s{s}" for s in seeds] + [f"TRL s{s}" for s in seeds] + ["KL ours", "KL TRL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(per_seed: dict[int, dict[int, float]], st: int) -> float | None:
        vals = [c[st] for c in per_seed.values() if st in c]
        return statistics.fmean(vals) if vals else None

    for st in steps:
        cells = [str(st), _fmt(mean(curves["ours"], st)), _fmt(mean(curves["trl"], st))]
        cells += [_fmt(curves[f].get(s, {}).get(st)) for f in FRAMEWORKS for s in seeds]
        cells += [_fmt(mean(kls[f], st)) for f in FRAMEWORKS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "| run | probe IoU first -> last (gain) | KL at last step | held-out Acc@0.5 | mIoU "
        "| train s (CPU s) | s/step | eval s |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for f in FRAMEWORKS:
        for s in seeds:
            r = runs.get(f"{f}/{s}")
            if r is None:
                continue
            c = curve(r)
            first, last = c[min(c)], c[max(c)]
            m, sec = r["metrics"], r["seconds"]
            cpu = sec.get("train_cpu", float("nan"))
            lines.append(
                f"| {f} seed {s} | {first:.3f} -> {last:.3f} ({last - first:+.3f}) | {_fmt(last_kl(f, r))} | "
                f"{100 * m['acc@0.5']:.1f} | {100 * m['miou']:.1f} | {sec['train']:.0f} ({cpu:.0f}) | "
                f"{sec['train'] / max(1, r['optimiser_steps']):.1f} | {sec['eval']:.0f} |"
            )
    return "\n".join(lines) + "\n"


#: Probe points averaged for a run's end value: the last one, and the last three (the probe is noisy
#: from one point to the next, so the second reading is the steadier one).
TAILS = (1, 3)


def gain(run: dict[str, Any], tail: int = 1) -> float:
    """The run's end value (mean of its last ``tail`` probe points) minus its first probe point."""
    c = curve(run)
    steps = sorted(c)
    return statistics.fmean(c[s] for s in steps[-tail:]) - c[steps[0]]


def verdict(runs: dict[str, dict[str, Any]], seeds: list[int], tail: int = 1) -> str:
    """The claim the curves test, in words: does each framework learn (every seed's gain > 0), and
    is ours within the seed spread of TRL (|mean gain difference| <= the larger seed sd)? A gain is
    the mean of a run's last ``tail`` probe points minus its first.

    >>> def run(*ious):
    ...     return {"probe": [{"step": 10.0 * i, "accuracy": v} for i, v in enumerate(ious)]}
    >>> runs = {"ours/0": run(0.40, 0.44, 0.46), "ours/1": run(0.40, 0.42, 0.44),
    ...         "trl/0": run(0.40, 0.45, 0.47), "trl/1": run(0.40, 0.41, 0.43)}
    >>> print(verdict(runs, [0, 1], tail=2))
    ours: gain +0.040 +- 0.014 (seeds 0, 1: +0.050, +0.030); learns: every seed's gain > 0
    trl: gain +0.040 +- 0.028 (seeds 0, 1: +0.060, +0.020); learns: every seed's gain > 0
    ours - TRL: +0.000, within the seed spread (sd 0.028): as fast as TRL per optimiser step
    >>> print(verdict({**runs, "ours/1": run(0.40, 0.40, 0.39)}, [0, 1]).splitlines()[0])
    ours: gain +0.025 +- 0.049 (seeds 0, 1: +0.060, -0.010); does not learn on every seed
    """
    lines, means, sds = [], {}, []
    for f in FRAMEWORKS:
        have = [s for s in seeds if f"{f}/{s}" in runs]
        if not have:
            continue
        gains = [gain(runs[f"{f}/{s}"], tail) for s in have]
        means[f] = statistics.fmean(gains)
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        sds.append(sd)
        learns = (
            "learns: every seed's gain > 0" if all(g > 0 for g in gains) else "does not learn on every seed"
        )
        each = ", ".join(f"{g:+.3f}" for g in gains)
        seeds_text = ", ".join(map(str, have))
        lines.append(f"{f}: gain {means[f]:+.3f} +- {sd:.3f} (seeds {seeds_text}: {each}); {learns}")
    if len(means) == 2:
        diff, spread = means["ours"] - means["trl"], max(sds)
        within = abs(diff) <= spread
        lines.append(
            f"ours - TRL: {diff:+.3f}, "
            + (
                f"within the seed spread (sd {spread:.3f}): as fast as TRL per optimiser step"
                if within
                else f"outside the seed spread (sd {spread:.3f}): {'faster' if diff > 0 else 'slower'} than TRL"
            )
        )
    return "\n".join(lines)


def figure(runs: dict[str, dict[str, Any]], seeds: list[int], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure", file=sys.stderr)
        return None
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(10, 4.2))
    for f, colour in zip(FRAMEWORKS, ("tab:blue", "tab:orange")):
        done = [runs[f"{f}/{s}"] for s in seeds if f"{f}/{s}" in runs]
        if not done:
            continue
        label = "ours (GRPOModule)" if f == "ours" else "TRL GRPOTrainer"
        cs = [curve(r) for r in done]
        for c in cs:
            ax.plot(sorted(c), [c[k] for k in sorted(c)], color=colour, alpha=0.35, lw=1)
        common = sorted(set.intersection(*(set(c) for c in cs)))
        ax.plot(
            common, [statistics.fmean(c[k] for c in cs) for k in common], color=colour, lw=2.2, label=label
        )
        for i, r in enumerate(done):
            pts = [(x["step"], x[KL_KEY[f]]) for x in r["steps"] if KL_KEY[f] in x]
            ax_kl.plot(*zip(*pts), color=colour, alpha=0.7, lw=1.2, label=label if i == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("reward probe: mean sampled IoU")
    ax_kl.set_xlabel("optimiser step")
    ax_kl.set_ylabel("KL to the reference (k3, per step)")
    fig.suptitle(title, fontsize=9)
    for a in (ax, ax_kl):
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
