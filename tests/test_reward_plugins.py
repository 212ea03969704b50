"""Rewards as plug-ins: a file outside the package, named in ``rewards:`` beside the built-ins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from univg.rl.reward_plugins import RewardPlugin, resolve_rewards
from univg.rl.rewards import compute_rewards

PLUGIN = textwrap.dedent(
    """
    class Brevity:
        # 1 for completions of at most max_chars characters, 0 beyond: a reward univg does not ship
        def __init__(self, max_chars):
            self.max_chars = max_chars

        def __call__(self, completions, **kwargs):
            return [1.0 if len(c) <= self.max_chars else 0.0 for c in completions]


    def box_given(completions, boxes, bonus=1.0, **kwargs):
        return [bonus * len(b) / 4 for b in boxes]


    def broken(completions, **kwargs):
        return [float("nan")] * len(completions)
    """
)

GOOD = "<think>x</think><answer>(0, 0), (100, 100)</answer>"  # IoU 0.5 with (0, 0, 100, 200)
LONG = "<think>" + "y" * 80 + "</think><answer>(0, 0), (100, 200)</answer>"  # IoU 1


@pytest.fixture()
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "my_rewards.py"
    path.parent.mkdir()
    path.write_text(PLUGIN)
    return path


def test_plugin_from_a_file_outside_the_package(plugin_file: Path) -> None:
    weights, functions = resolve_rewards(
        {
            "accuracy": 1.0,
            "brevity": {
                "class_path": f"{plugin_file}:Brevity",
                "init_args": {"max_chars": 60},
                "weight": 0.5,
            },
            "given": RewardPlugin(class_path=f"{plugin_file}:box_given", init_args={"bonus": 2.0}),
        }
    )
    assert weights == {"accuracy": 1.0, "brevity": 0.5, "given": 1.0}
    out = compute_rewards(weights, [GOOD, LONG], [(0, 0, 100, 200)] * 2, functions=functions)
    assert out["accuracy"].tolist() == [0.5, 1.0]
    assert out["brevity"].tolist() == [1.0, 0.0]  # len(GOOD) = 51, len(LONG) = 133
    assert out["given"].tolist() == [2.0, 2.0]
    # total = 1 * accuracy + 0.5 * brevity + 1 * given, by hand
    assert out["total"].tolist() == [0.5 + 0.5 + 2.0, 1.0 + 0.0 + 2.0]


def test_plugin_errors_name_the_reward(plugin_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file"):
        resolve_rewards({"x": {"class_path": f"{tmp_path}/missing.py:Brevity"}})
    with pytest.raises(ValueError, match="has no 'Nope'"):
        resolve_rewards({"x": {"class_path": f"{plugin_file}:Nope"}})
    with pytest.raises(ValueError, match=r"rewards.x: a plug-in takes the keys .* got \['class_pth'\]"):
        resolve_rewards({"x": {"class_pth": f"{plugin_file}:Brevity"}})
    with pytest.raises(ValueError, match="unknown reward 'acuracy'"):
        resolve_rewards({"acuracy": 1.0})
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        resolve_rewards({"x": {"class_path": f"{plugin_file}:Brevity"}})  # init_args forgotten
    weights, functions = resolve_rewards({"bad": {"class_path": f"{plugin_file}:broken"}})
    with pytest.raises(ValueError, match="reward 'bad' returned a non-finite score"):
        compute_rewards(weights, [GOOD], [(0, 0, 100, 200)], functions=functions)


def test_plugin_by_module_path() -> None:
    # a module path, as an installed package's reward would be named: here one of univg's own
    weights, functions = resolve_rewards(
        {"iou": {"class_path": "univg.rl.rewards.iou_reward", "weight": 2.0}}
    )
    out = compute_rewards(weights, [GOOD], [(0, 0, 100, 200)], functions=functions)
    assert out["iou"].tolist() == [0.5] and out["total"].tolist() == [1.0]
