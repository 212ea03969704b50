"""Prompt templates, chat messages and assistant targets."""

from __future__ import annotations

import pytest

from univg.core.boxes import Box
from univg.core.prompts import PROMPTS, build_messages, render_prompt, split_prompt, split_target, target_text
from univg.core.sample_types import GroundingSample, SampleError

SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the bounding box in "
    "<answer> </answer> tags."
)


def sample(**kw):
    fields = dict(
        id="s",
        task="t",
        images=["a.jpg", "b.jpg"],
        target_index=1,
        question="Q?",
        box=Box(0.1, 0.25, 0.5, 0.999),
    )
    fields.update(kw)
    return GroundingSample(**fields)


def test_templates_match_design_text():
    assert set(PROMPTS) == {"reasoning", "refcoco_single", "lisa", "llmseg", "vos", "plain"}
    assert render_prompt("reasoning", "Find it.") == "Find it." + SUFFIX
    assert render_prompt("plain", "Find it.") == "Find it."
    assert render_prompt("refcoco_single", "man in red") == (
        "This is a single image grounding task with simple reference. man in red"
    )
    lisa = (
        "Output the bounding box in the image corresponding to the instruction: what keeps rain off." + SUFFIX
    )
    assert (
        render_prompt("lisa", "what keeps rain off") == lisa == render_prompt("llmseg", "what keeps rain off")
    )
    assert render_prompt("vos", "the dog that jumps") == (
        "This is a sequence of images from a video. Please understand the entire video content, and then output "
        "the bounding box in the third image according to the instruction: the dog that jumps." + SUFFIX
    )
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        render_prompt("nope", "x")


@pytest.mark.parametrize("name", ["reasoning", "refcoco_single", "lisa", "vos", "plain"])
def test_split_prompt_inverts_render(name):
    q = "Where is {the} thing in the 2th image? "  # braces and trailing space survive
    assert split_prompt(render_prompt(name, q)) == (name, q)


def test_build_messages_images_first_and_sample_override():
    msgs = build_messages(sample(), "reasoning")
    assert msgs == [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?" + SUFFIX}],
        }
    ]
    own = build_messages(sample(prompt_template="plain"), "reasoning")
    assert own[0]["content"][-1]["text"] == "Q?"


def test_target_text_formats():
    s = sample(reasoning="The second image shows it.")
    # 0.999 * 1000 = 999 and 0.25 * 1000 = 250 exactly; int() truncates as the release does.
    assert (
        target_text(s, "cot")
        == "<think>The second image shows it.</think><answer>(100, 250), (500, 999)</answer>"
    )
    assert target_text(s, "answer") == "<answer>(100, 250), (500, 999)</answer>"
    assert target_text(s, "auto") == target_text(s, "cot")
    bare = sample()
    assert target_text(bare, "auto") == "<answer>(100, 250), (500, 999)</answer>"
    with pytest.raises(SampleError, match="field 'reasoning': expected CoT text"):
        target_text(bare, "cot")
    with pytest.raises(ValueError, match="unknown target_format"):
        target_text(s, "json")
    # A pixel frame needs the (resized) image size: 448 x 224.
    assert (
        target_text(bare, "answer", frame="pixels", size=(448, 224))
        == "<answer>(45, 56), (224, 224)</answer>"
    )


def test_split_target():
    assert split_target("<think>a\nb</think>\n<answer>(1, 2), (3, 4)</answer>") == ("a\nb", "(1, 2), (3, 4)")
    assert split_target("<answer>(1, 2), (3, 4)</answer>") == (None, "(1, 2), (3, 4)")
    assert split_target("<think>x</think>") is None


def test_prompts_sit_below_the_data_package():
    """No back-edge: ``univg.data.collate`` imports ``univg.core.prompts``, so ``prompts`` (and the sample
    types it renders) import nothing from ``univg.data``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "univg" / "core"
    for name in ("prompts.py", "sample_types.py"):
        tree = ast.parse((root / name).read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("univg.data")], (name, imported)
