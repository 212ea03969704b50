"""The demo's outputs: ``summary.json``, the table, Figure 3 and the prediction sheet."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from univg.demo.settings import DemoSettings


def write_outputs(
    cfg: DemoSettings,
    out: Path,
    rows: dict[str, dict[str, float]],
    curves: dict[str, list[dict[str, float]]],
    probes: dict[str, list[dict[str, float]]],
    times: dict[str, float],
    sft_losses: dict[str, list[float]],
    **extra: Any,
) -> dict[str, Any]:
    """``summary.json`` (settings, metrics, curves, probe points, SFT losses, seconds), the table
    and Figure 3."""
    summary = {
        "settings": asdict(cfg),
        **extra,
        "rows": rows,
        "grpo_curves": curves,
        "reward_probe": probes,
        "sft_losses": sft_losses,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_table(rows, cfg.eval_tasks, out)
    if curves:  # no GRPO run (grpo_phis empty): no Figure 3
        plot_figure3(curves, out / "figure3.png", probes)
    return summary


def write_table(rows: dict[str, dict[str, float]], tasks: Sequence[str], out: Path) -> str:
    """Markdown and CSV: a row per stage, Acc@0.5 per task, mean IoU, AVG (unweighted over tasks)."""
    header = ["stage", *[f"{t} Acc@0.5" for t in tasks], "Acc@0.5", "mean IoU", "AVG"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for name, m in rows.items():
        cells = [name, *[f"{100 * m.get(f'acc@0.5/{t}', 0.0):.1f}" for t in tasks]]
        cells += [
            f"{100 * m.get('acc@0.5', 0.0):.1f}",
            f"{100 * m.get('miou', 0.0):.1f}",
            f"{100 * m.get('avg', 0.0):.1f}",
        ]
        table.append(cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    return text


def plot_figure3(
    curves: dict[str, list[dict[str, float]]],
    path: Path,
    probes: dict[str, list[dict[str, float]]] | None = None,
) -> None:
    """Paper Figure 3: share of groups per mIoU band over GRPO steps, one panel per run, with the
    step's mean reward and (when given) the reward on the fixed probe prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = [
        ("difficulty/miou_lt_0.3", "mIoU < 0.3"),
        ("difficulty/miou_0.3_0.7", "0.3-0.7"),
        ("difficulty/miou_gt_0.7", "> 0.7"),
    ]
    # top row: the paper's Figure 3 (shares of groups); bottom row: rewards on their own scale
    fig, axes = plt.subplots(
        2, len(curves), figsize=(5 * len(curves), 6.4), sharex=True, sharey="row", squeeze=False
    )
    for col, (label, steps) in enumerate(curves.items()):
        top, bottom = axes[0][col], axes[1][col]
        xs = [s["step"] for s in steps]
        for key, name in bands:
            top.plot(xs, [s.get(key, 0.0) for s in steps], marker="o", markersize=3, label=name)
        top.set_title(label)
        top.set_ylim(0, 1)
        bottom.plot(
            xs, [s.get("reward/total_mean", 0.0) for s in steps], "k--", linewidth=1, label="step's prompts"
        )
        points = (probes or {}).get(label, [])
        if points:
            bottom.plot(
                [p["step"] for p in points],
                [p["total"] for p in points],
                "ks-",
                markersize=4,
                label="fixed probe prompts",
            )
        bottom.set_xlabel("GRPO step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of groups")
    axes[1][0].set_ylabel("mean reward (IoU + format)")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    axes[1][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collect_pictures(out: Path, path: Path, per_stage: int = 4) -> None:
    """One sheet of prediction pictures: a row per evaluated stage."""
    from PIL import Image, ImageDraw

    stages = [d for d in sorted(out.glob("*_eval")) if d.is_dir()]
    rows = []
    for d in stages:
        pics = sorted(d.rglob("pictures_test/*.png"))[:per_stage]
        if pics:
            rows.append((d.name.removesuffix("_eval"), [Image.open(p).convert("RGB") for p in pics]))
    if not rows:
        Image.new("RGB", (320, 40), "white").save(path)
        return
    w = max(sum(im.width for im in ims) for _, ims in rows) + 120
    h = sum(max(im.height for im in ims) for _, ims in rows)
    sheet = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for name, ims in rows:
        draw.text((4, y + 4), name, fill="black")
        x = 120
        for im in ims:
            sheet.paste(im, (x, y))
            x += im.width
        y += max(im.height for im in ims)
    sheet.save(path)
