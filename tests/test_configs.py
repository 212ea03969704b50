"""Every YAML in configs/ and experiments/ loads through the CLI (``--print_config``), unknown keys fail.

Stage configs load alone; overlays (configs/fsdp/, experiments/) load the way they are used: the
grid's compositions are read from ``make -n`` itself (both scales), so a test covers exactly the
commands ``make table4`` etc. would run. Parsing does not build models or read data.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import print_config

ROOT = Path(__file__).resolve().parent.parent
GRID_TARGETS = ("table4", "table5", "table6", "size", "ablation-phi", "beyond")

# overlays in configs/fsdp/ -> the stage configs they are documented with
FSDP_BASES = {
    "7b_8gpu.yaml": ["configs/cot_sft.yaml", "configs/grpo_diff.yaml"],
    "2b_8gpu.yaml": ["configs/cot_sft.yaml", "configs/grpo.yaml"],
    "7b_2node.yaml": ["configs/grpo_diff.yaml"],
    "tiny_ddp.yaml": ["configs/debug.yaml"],
    "tiny_fsdp.yaml": ["configs/debug.yaml"],
}


def stage_configs() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))


def eval_configs() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "eval").glob("*.yaml"))


def grid_commands(scale: str) -> list[list[str]]:
    """The ``python -m univg fit|test ...`` argument lists that ``make -n`` prints for the grid."""
    proc = subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            *GRID_TARGETS,
            f"SCALE={scale}",
            "GRID_RUNS=/nonexistent/grid",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    commands = []
    for line in proc.stdout.splitlines():
        words = shlex.split(line)
        if len(words) > 3 and words[1:3] == ["-m", "univg"]:
            commands.append(words[3:])
    return list({tuple(c): c for c in commands}.values())  # rows shared by targets once


FULL = grid_commands("full")
DEBUG = grid_commands("debug")


def grid_rows() -> dict[str, list[str]]:
    """Make's row of each trained grid run (the folder its weights are taken from) -> its fit command."""
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *GRID_TARGETS, "GRID_RUNS=/nonexistent/grid"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows, fit = {}, None
    for words in map(shlex.split, proc.stdout.splitlines()):
        if words[1:4] == ["-m", "univg", "fit"]:
            fit = words[4:]
        elif words[1:4] == ["-m", "univg.sharded_checkpoint", "weights"] and fit is not None:
            rows[Path(words[4]).parents[2].name] = fit  # /nonexistent/grid/<row>/fit/checkpoints/last.ckpt
            fit = None
    return rows


def test_a_row_yaml_says_the_name_and_start_make_gives_its_row():
    """A trained row's name and the stage-1 row it starts from are in make/grid.mk's row table and
    in the row's YAML (which also runs by hand); the two must agree, or make looks for weights in a
    folder the run never wrote."""
    rows = grid_rows()
    assert len(rows) == 18
    for row, fit in rows.items():
        overlay = next(a for a in fit if a.startswith(("experiments/table", "experiments/beyond")))
        written = yaml.safe_load((ROOT / overlay).read_text())
        assert written["trainer"]["logger"]["init_args"]["name"] == row, overlay
        start = ((written.get("model") or {}).get("init_args") or {}).get("init_checkpoint")
        passed = [a.split("=", 1)[1] for a in fit if a.startswith("--model.init_args.init_checkpoint=")]
        expected = [start.replace("runs/", "/nonexistent/grid/", 1)] if start else []
        assert passed == expected, overlay


def test_grid_covers_every_experiment_yaml():
    used = {a for cmd in FULL + DEBUG for a in cmd if a.endswith(".yaml")}
    every = {str(p.relative_to(ROOT)) for p in (ROOT / "experiments").rglob("*.yaml")}
    assert every - used == set()
    # the paper's 16 rows (14 trained, 2 evaluated only) and 4 trained beyond it, at each scale;
    # every row is evaluated but the Qwen2.5-VL stage-1 row (make beyond tables its stage 2 only)
    assert sum(c[0] == "fit" for c in FULL) == 18 and sum(c[0] == "test" for c in FULL) == 19
    assert len(DEBUG) == len(FULL)


def test_unknown_keys_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    phi_typo: exp\n")
    with pytest.raises(AssertionError, match="rejected"):
        print_config(["fit", "--config", "configs/grpo_diff.yaml", "--config", str(bad)])


@pytest.mark.parametrize("path", stage_configs())
def test_stage_config_loads(path):
    cfg = print_config(["fit", "--config", path])
    assert cfg["model"]["class_path"].startswith("univg.modules.")


@pytest.mark.parametrize("path", eval_configs())
def test_eval_config_loads(path):
    print_config(["test", "--config", path])


@pytest.mark.parametrize(
    "overlay,base", [(k, b) for k, bases in FSDP_BASES.items() for b in bases], ids=lambda x: Path(x).name
)
def test_fsdp_overlay_loads(overlay, base):
    cfg = print_config(["fit", "--config", base, "--config", f"configs/fsdp/{overlay}"])
    strategy = cfg["trainer"]["strategy"]["class_path"]
    if overlay.startswith("tiny_ddp"):
        assert strategy.endswith("DDPStrategy")
    else:
        assert strategy == "univg.distributed.FSDP2Strategy"
        if not overlay.startswith("tiny"):
            assert cfg["trainer"]["strategy"]["init_args"]["param_dtype"] == "bfloat16"
            assert cfg["model"]["init_args"]["backbone"]["gradient_checkpointing"] is True


def test_every_fsdp_overlay_is_checked():
    assert {p.name for p in (ROOT / "configs" / "fsdp").glob("*.yaml")} == set(FSDP_BASES)


def _id(cmd: list[str]) -> str:
    name = next((a.split("=", 1)[1] for a in cmd if a.startswith("--trainer.logger.init_args.name=")), None)
    overlay = [a for a in cmd if a.startswith(("experiments/table", "experiments/beyond"))]
    return f"{cmd[0]}-{name or Path(overlay[0]).stem}"


@pytest.mark.parametrize("cmd", FULL, ids=[_id(c) for c in FULL])
def test_grid_row_loads_full_scale(cmd):
    cfg = print_config(cmd)
    name = cfg["trainer"]["logger"]["init_args"]["name"]
    assert name.startswith(("table4_", "table5_", "table6_", "beyond_"))  # every run says its row
    backbone = cfg["model"]["init_args"]["backbone"]
    expected = {"table6_": "qwen2-vl-2b", "beyond_q25": "qwen2.5-vl-7b"}
    assert backbone["preset"] == next((v for k, v in expected.items() if name.startswith(k)), "qwen2-vl-7b")
    if cmd[0] == "fit":
        callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
        assert "univg.callbacks.HParamsLogger" in callbacks
        assert cfg["trainer"]["strategy"]["class_path"] == "univg.distributed.FSDP2Strategy"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", DEBUG, ids=[_id(c) for c in DEBUG])
def test_grid_row_loads_debug_scale(cmd):
    cfg = print_config(cmd)
    q25 = any("beyond_q25" in a or "qwen2.5" in a for a in cmd)
    assert cfg["model"]["init_args"]["backbone"]["preset"] == ("tiny-qwen2.5-vl" if q25 else "tiny")
    assert cfg["trainer"]["accelerator"] == "cpu"
    if cmd[0] == "fit":
        assert cfg["data"]["class_path"] == "univg.data.SyntheticDataModule"


def test_phi_rows_differ_only_in_phi_and_name():
    rows = {}
    for cmd in FULL:
        if cmd[0] == "fit" and any("experiments/table5/" in a for a in cmd):
            cfg = print_config(cmd)
            rows[cfg["model"]["init_args"]["phi"]] = cfg
    assert set(rows) == {"none", "neglog", "square", "exp"}
    ref = rows["exp"]
    for phi, cfg in rows.items():
        assert cfg["model"]["init_args"]["init_checkpoint"].endswith("table4_cot90k/fit/weights.ckpt")
        for section in ("data", "trainer"):
            a, b = dict(cfg[section]), dict(ref[section])
            if section == "trainer":
                a["logger"], b["logger"] = None, None
            assert a == b, (phi, section)
        diff = {k for k, v in cfg["model"]["init_args"].items() if ref["model"]["init_args"][k] != v}
        assert diff <= {"phi"}, (phi, diff)


def _without(cfg: dict, *keys: str) -> dict:
    """``cfg`` with the dotted ``keys`` removed (each a leaf of the resolved config)."""
    out = yaml.safe_load(yaml.safe_dump(cfg))
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(leaf)
    return out


@pytest.mark.parametrize(
    "overlay,base,differs",
    [
        ("configs/grpo_diff.yaml", "configs/grpo.yaml", {"model.init_args.phi": ("exp", "none")}),
        ("configs/rl.yaml", "configs/grpo.yaml", {"model.init_args.init_checkpoint": (None, "runs/")}),
        ("configs/grpo_diff_debug.yaml", "configs/grpo_debug.yaml", {"model.init_args.phi": ("exp", "none")}),
        ("configs/rl_debug.yaml", "configs/grpo_debug.yaml", {}),
    ],
    ids=lambda x: Path(x).stem if isinstance(x, str) else "",
)
def test_overlay_configs_equal_their_base_but_for_name_and_their_rows(overlay, base, differs):
    """The overlays are short files on top of ``base_config``; resolved, they equal the base config
    except the run name and the knobs their row is about."""
    mine, theirs = print_config(["fit", "--config", overlay]), print_config(["fit", "--config", base])
    assert mine["trainer"]["logger"]["init_args"]["name"] == Path(overlay).stem
    for key, (value, base_value) in differs.items():
        section, _, rest = key.partition(".init_args.")
        got, expected = mine[section]["init_args"][rest], theirs[section]["init_args"][rest]
        assert got == value and (expected or "").startswith(base_value), (key, got, expected)
    skip = ["trainer.logger.init_args.name", *differs]
    assert _without(mine, *skip) == _without(theirs, *skip)
    assert len((ROOT / overlay).read_text().splitlines()) <= 12  # each fact once: the rest is the base's


def test_vllm_config_is_grpo_diff_with_the_vllm_engine():
    mine, theirs = (
        print_config(["fit", "--config", "configs/grpo_diff_vllm.yaml"]),
        print_config(["fit", "--config", "configs/grpo_diff.yaml"]),
    )
    engine = mine["model"]["init_args"]["engine"]
    assert engine["class_path"] == "univg.engines.VLLMEngine" and engine["init_args"]["mode"] == "colocate"
    assert theirs["model"]["init_args"]["engine"] is None  # the default: SharedPrefill
    skip = ["trainer.logger.init_args.name", "model.init_args.engine"]
    assert _without(mine, *skip) == _without(theirs, *skip)


def _rejected(args: list[str]) -> str:
    """The CLI's one-line error for ``args`` (which must fail at parse time, building nothing)."""
    with pytest.raises(AssertionError, match="rejected") as err:
        print_config(args)
    return str(err.value)


@pytest.mark.parametrize(
    "key,value,choices",
    [
        ("phi", "expp", "'none', 'exp', 'square', 'neglog'"),
        ("loss_type", "grpp", "'grpo', 'bnpo', 'dr_grpo', 'dapo'"),
        ("importance_sampling_level", "seq", "'token', 'sequence'"),
        ("scale_rewards", "btch", "'group', 'batch', 'none'"),
        ("schedule", "cosin", "'cosine', 'linear', 'constant'"),
    ],
)
def test_a_knob_typo_fails_at_parse_time_naming_the_choices(key, value, choices):
    message = _rejected(["fit", "--config", "configs/grpo_diff.yaml", f"--model.init_args.{key}", value])
    assert f"model.init_args.{key}" in message and choices in message and value in message


def test_engine_typos_fail_at_parse_time(tmp_path):
    engine = tmp_path / "engine.yaml"
    engine.write_text(
        "model:\n  init_args:\n    engine: {class_path: univg.engines.VLLMEngine, init_args: {mode: remote}}\n"
    )
    message = _rejected(["fit", "--config", "configs/grpo_diff.yaml", "--config", str(engine)])
    assert "mode" in message and "'colocate', 'server'" in message
    engine.write_text(
        "model:\n  init_args:\n    engine: {class_path: univg.engines.VLLMEngine, init_args: {gpu_mem: 0.3}}\n"
    )
    assert "gpu_mem" in _rejected(["fit", "--config", "configs/grpo_diff.yaml", "--config", str(engine)])
    message = _rejected(
        ["fit", "--config", "configs/grpo_diff.yaml", "--model.init_args.engine", "univg.engines.Shared"]
    )
    assert "engine" in message


def test_beyond_the_paper_knobs_parse(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "model:\n  init_args:\n    loss_type: dapo\n    importance_sampling_level: sequence\n"
        "    dynamic_sampling: {max_tries: 3}\n"
        "    rewards:\n      accuracy: 1.0\n      format: 1.0\n"
        "      brevity: {class_path: my_rewards.py:Brevity, init_args: {max_chars: 400}, weight: 0.5}\n"
    )
    cfg = print_config(["fit", "--config", "configs/grpo_diff.yaml", "--config", str(extra)])["model"][
        "init_args"
    ]
    assert cfg["dynamic_sampling"] == {"max_tries": 3} and cfg["importance_sampling_level"] == "sequence"
    assert cfg["rewards"]["brevity"]["init_args"] == {"max_chars": 400}
    extra.write_text("model:\n  init_args:\n    dynamic_sampling: {max_trys: 3}\n")
    assert "max_trys" in _rejected(["fit", "--config", "configs/grpo_diff.yaml", "--config", str(extra)])


def test_base_config_errors_name_the_file(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("base_config: loop.yaml\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text("base_config: nowhere.yaml\n")
    for path, text in ((loop, "builds on itself"), (missing, "does not exist")):
        message = _rejected(["fit", "--config", str(path)])
        assert str(path) in message and "base_config" in message and text in message
