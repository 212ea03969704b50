"""The grid's scales: an unknown SCALE stops at once; SCALE=mini runs the demo's recipe (one source
of truth: the composed configs equal what the demo builds); SEEDS runs the grid per seed."""

from __future__ import annotations

import dataclasses
import inspect
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import print_config

ROOT = Path(__file__).resolve().parents[1]


def make_n(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def univg_commands(stdout: str) -> list[list[str]]:
    out = []
    for line in stdout.splitlines():
        words = shlex.split(line)
        if len(words) > 3 and words[1:3] == ["-m", "univg"]:
            out.append(words[3:])
    return out


@pytest.mark.parametrize("target", ["ablation-phi", "table4", "demo"])
def test_unknown_scale_fails_at_once_with_the_list(target):
    # an unknown scale is an error, not the full-scale 7B commands
    proc = make_n(target, "SCALE=bogus")
    assert proc.returncode != 0
    assert "unknown SCALE=bogus: choose one of full mini debug" in proc.stderr
    assert "univg" not in proc.stdout  # nothing would have run


class _Built(Exception):
    """Raised by a stand-in module class: the demo's arguments are recorded, nothing is trained."""


def demo_arguments(monkeypatch, tmp_path, cfg) -> dict:
    """What the demo builds for ``cfg``: the keyword arguments of its SFTModule and GRPOModule and
    of every ``generate_samples`` call, recorded by running its own code up to each construction."""
    import univg.demo as demo
    from univg.data.synthetic import generate_samples

    seen: dict = {"samples": []}

    def record_samples(n, **kw):
        seen["samples"].append({"n": n, **kw})
        return generate_samples(min(n, 4), **kw)  # a few real samples: the demo's code goes on

    def stand_in(key):
        def build(**kw):
            seen[key] = kw
            raise _Built

        return build

    for fn in (demo.run_demo, demo.run_grpo_stage, demo.held_out_set):
        mod = sys.modules[fn.__module__]
        monkeypatch.setattr(mod, "generate_samples", record_samples, raising=False)
        monkeypatch.setattr(mod, "SFTModule", stand_in("sft"), raising=False)
        monkeypatch.setattr(mod, "GRPOModule", stand_in("grpo"), raising=False)
    with pytest.raises(_Built):
        demo.run_demo(cfg, tmp_path / "demo")
    with pytest.raises(_Built):
        demo.run_grpo_stage(cfg, tmp_path / "stage1.ckpt", [], tmp_path / "demo")
    return seen


def expected_init_args(cls, demo_kwargs: dict) -> dict:
    """Every init argument of ``cls``: the demo's value, else the class default."""
    params = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if p.default is not inspect.Parameter.empty:
                    params[name] = p.default
    params.update(demo_kwargs)
    return params


def test_mini_scale_composes_exactly_the_demo_recipe(monkeypatch, tmp_path):
    from univg.demo import DemoSettings, Phase
    from univg.demo.grid import write_overlays
    from univg.modules import GRPOModule, SFTModule

    cfg = DemoSettings(seed=3, phases=[Phase(["single"], 12)], grpo_steps=3, eval_n=5)
    demo = demo_arguments(monkeypatch, tmp_path, cfg)
    root = tmp_path / "grid"
    proc = make_n("ablation-phi", "SCALE=mini", "SEED=3", f"GRID_ROOT={root}")
    assert proc.returncode == 0, proc.stderr
    assert (
        "univg.demo.grid overlays --seed 3" in proc.stdout and f"--out {root}/seed3/overlays" in proc.stdout
    )
    write_overlays(cfg, root / "seed3" / "overlays")  # what that command writes, with these budgets
    cmds = univg_commands(proc.stdout)
    fit_sft = next(c for c in cmds if c[0] == "fit" and "configs/cot_sft.yaml" in c)
    fit_grpo = next(c for c in cmds if c[0] == "fit" and "experiments/table5/phi_neglog.yaml" in c)
    test = next(c for c in cmds if c[0] == "test")
    sft, grpo, ev = print_config(fit_sft), print_config(fit_grpo), print_config(test)

    # the row's own knobs pass through; everything else is the demo's (or the class default it relies on)
    row_knobs = {"init_checkpoint", "run_name", "num_pictures", "phi", "phi_eps", "log_completions_every"}
    for composed, cls, key in ((sft, SFTModule, "sft"), (grpo, GRPOModule, "grpo")):
        want = expected_init_args(cls, demo[key])
        got = composed["model"]["init_args"]
        want["backbone"] = dataclasses.asdict(want["backbone"])
        want["adam_betas"] = list(want["adam_betas"])
        for name in set(want) - row_knobs:
            assert got[name] == want[name], (key, name)
    assert grpo["model"]["init_args"]["phi"] == "neglog"

    # the data: the demo's sample sets (held-out, stage-1 phase, stage-2 prompts), same seeds and options
    held_out, phase, prompts = demo["samples"][0], demo["samples"][1], demo["samples"][-2]
    for composed, split, drawn, count in (
        (sft, 0, phase, "num_train"),
        (grpo, 0, prompts, "num_train"),
        (ev, 2, held_out, "num_test"),
    ):
        data = composed["data"]["init_args"]
        assert data[count] == drawn["n"]
        assert data["seed"] + split == drawn["seed"]
        assert data["tasks"] == list(drawn["tasks"]) and data["image_size"] == drawn["image_size"]
        for option, value in data["synthetic"].items():
            assert value == (list(drawn[option]) if isinstance(drawn[option], tuple) else drawn[option])
    assert sft["trainer"]["max_steps"] == 12 and grpo["trainer"]["max_steps"] == 3
    assert sft["data"]["init_args"]["batch_size"] == cfg.sft_batch
    assert grpo["data"]["init_args"]["batch_size"] == cfg.grpo_prompts
    assert (
        ev["model"]["init_args"]["backbone"]["overrides"]
        == sft["model"]["init_args"]["backbone"]["overrides"]
    )
    assert ev["model"]["init_args"]["max_new_tokens"] == cfg.max_new_tokens


def test_mini_phi_table_starts_from_stage1_and_the_constant_box():
    proc = make_n("ablation-phi", "SCALE=mini", "GRID_ROOT=/nonexistent/mini")
    assert proc.returncode == 0, proc.stderr
    merge = next(line for line in proc.stdout.splitlines() if "univg.reports merge" in line)
    runs = [w for w in shlex.split(merge) if w.startswith("/nonexistent/")]
    assert [Path(r).parent.name for r in runs[:-1]] == [
        "mini_constant_box",
        "table4_cot90k",
        "table5_phi_none",
        "table5_phi_neglog",
        "table5_phi_square",
        "table5_phi_exp",
    ]
    cmds = univg_commands(proc.stdout)
    assert sum(c[0] == "fit" for c in cmds) == 5 and sum(c[0] == "test" for c in cmds) == 5  # stage 1 once


def test_seeds_run_the_grid_once_per_seed_then_merge_with_spread():
    proc = make_n("ablation-phi", "SCALE=debug", "SEEDS=0,1,2", "GRID_ROOT=/nonexistent/d")
    assert proc.returncode == 0, proc.stderr
    cmds = univg_commands(proc.stdout)
    for seed in (0, 1, 2):
        fits = [c for c in cmds if c[0] == "fit" and f"--seed_everything={seed}" in c]
        assert len(fits) == 5, seed  # stage 1 and the 4 phi rows, per seed
        assert all(f"--trainer.logger.init_args.save_dir=/nonexistent/d/seed{seed}" in c for c in fits)
    merge = [line for line in proc.stdout.splitlines() if "univg.reports merge --seeds" in line]
    assert len(merge) == 1
    assert "/nonexistent/d/seed2/table5_phi_exp/test" in merge[0]
    assert merge[0].endswith("--out /nonexistent/d/ablation-phi-seeds.md")


def run_grid_in_process(target: str, root: Path, *make_args: str) -> None:
    """Run the commands ``make -n`` prints for ``target``, in this process (one import of torch)."""
    from univg import reports, sharded_checkpoint
    from univg.cli import main as univg_main

    proc = make_n(target, f"GRID_ROOT={root}", *make_args)
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        words = shlex.split(line)
        if len(words) < 3 or words[1] != "-m":
            continue
        module, argv = words[2], words[3:]
        if module == "univg":
            univg_main(argv)
        elif module == "univg.sharded_checkpoint":
            assert sharded_checkpoint.main(argv) == 0
        elif module == "univg.reports":
            assert reports.main(argv) == 0


@pytest.mark.slow
def test_hparams_view_lists_the_phi_rows_with_their_test_avg(tmp_path):
    # The HParams view reads each run folder's session (hyper-parameters) and the last value of its
    # metric tags; read them back with TensorBoard's own event reader, as the dashboard does.
    import json
    import math

    from univg.data.synthetic import TASKS
    from univg.hparams_view import read_sessions, render

    root = tmp_path / "debug"
    # one optimiser step per fit (GRID_EXTRA, after the scale's overlay): the view reads sessions
    # and metrics, whatever the step budget
    run_grid_in_process("ablation-phi", root, "SCALE=debug", "GRID_EXTRA=--trainer.max_steps=1")
    sessions = read_sessions(root)
    fits = {name: s for name, s in sessions.items() if name.startswith("table5_") and name.endswith("/fit")}
    assert sorted(s["1 phi"] for s in fits.values()) == ["exp", "neglog", "none", "square"]
    for name, session in fits.items():
        row = name.split("/")[0]
        results = json.loads((root / row / "test" / "results_test.json").read_text())["metrics"]
        # the training run carries the test AVG its evaluation measured (written by that evaluation)
        assert not math.isnan(session["test/avg"])
        assert session["test/avg"] == pytest.approx(results["avg"], abs=1e-6)
        tasks = [k for k in results if k.startswith("acc@0.5/") and k.split("/", 1)[1] in TASKS]
        assert tasks  # per-task columns: the tasks the evaluation scored
        for key in tasks:
            assert session[f"test/{key}"] == pytest.approx(results[key], abs=1e-6)
        assert session["2 stage"] == "stage 2 GRPO" and session["4 preset"] == "tiny"
        assert session["model.phi"] == session["1 phi"]
    stage1 = sessions["table4_cot90k/fit"]
    assert stage1["1 phi"] == "n/a" and stage1["2 stage"] == "stage 1 CoT-SFT"
    table = render(fits)
    assert table.splitlines()[0].startswith("| run | 1 phi | 2 stage | 3 data size | 4 preset | test/avg")
    merged = (root / "ablation-phi.md").read_text()
    assert "| Model | phi |" in merged and "| table5_phi_square | square |" in merged


@pytest.mark.slow
def test_every_grid_row_loads_at_mini_scale(tmp_path):
    # table4, table6 and size run their rows the same way as ablation-phi: every command composes
    from univg.demo import DemoSettings
    from univg.demo.grid import write_overlays

    root = tmp_path / "mini"
    write_overlays(DemoSettings(seed=0), root / "seed0" / "overlays")
    proc = make_n("table4", "table5", "table6", "size", "SCALE=mini", f"GRID_ROOT={root}")
    assert proc.returncode == 0, proc.stderr
    cmds = list({tuple(c): c for c in univg_commands(proc.stdout)}.values())
    assert sum(c[0] == "fit" for c in cmds) == 14 and sum(c[0] == "test" for c in cmds) == 16
    for cmd in cmds:
        cfg = print_config(cmd)
        backbone = cfg["model"]["init_args"]["backbone"]
        assert backbone["preset"] == "tiny" and backbone["checkpoint"] is None, cmd
        assert backbone["overrides"]["text_config"]["hidden_size"] == DemoSettings().hidden
        assert cfg["data"]["class_path"] == "univg.data.SyntheticDataModule", cmd
        assert cfg["trainer"]["accelerator"] == "cpu" and cfg["trainer"]["strategy"] == "auto"
