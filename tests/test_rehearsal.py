"""``make rehearsal`` as CI runs it: the 7B stage configs as written, on the tiny preset and 2 CPU
processes, with every run-time invariant holding and stage 2 learning (slow: a few minutes on
2 cores). tests/test_rehearsal_faults.py shows each invariant failing on its fault."""

from __future__ import annotations

import json

import pytest
import torch

from univg.rehearsal.inputs import INSTRUCT_GENERATION_CONFIG, stand_in_model, write_checkpoint
from univg.rehearsal.run import main


def test_released_layout_checkpoint_loads_as_the_preset(tmp_path):
    """The rehearsal's stand-in for Qwen2-VL-7B-Instruct: a transformers-4.x folder (flat config,
    legacy weight names, the Instruct generation config) that ``from_pretrained`` reads back."""
    from univg.model.backbone import BackboneSpec

    folder = write_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    assert "text_config" not in config and config["rope_scaling"]["type"] == "mrope"
    assert json.loads((folder / "generation_config.json").read_text()) == INSTRUCT_GENERATION_CONFIG
    built = stand_in_model().eval()
    loaded = BackboneSpec(preset="tiny", checkpoint=str(folder)).build().eval()
    assert loaded.generation_config.repetition_penalty == 1.05
    ids = torch.tensor([[151644, 872, 198, 9707, 11, 1879, 0]])
    with torch.no_grad():
        assert torch.equal(built(input_ids=ids).logits, loaded(input_ids=ids).logits)


@pytest.mark.slow
def test_rehearsal_passes(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "rehearsal")])
    out = capsys.readouterr().out
    assert "FAIL" not in out, out
    assert rc == 0
    assert "invariants hold" in out
    # stage 2 learned: the report shows non-zero advantages and a weight change
    assert "stage 2 step 0: mean |A|" in out and "stage 2 weight change: max |delta|" in out
