"""``make rehearsal`` as CI runs it: the 7B stage configs as written, on the tiny preset and 2 CPU
processes, with every run-time invariant holding (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
import torch

from univg.rehearsal import INSTRUCT_GENERATION_CONFIG, main, stand_in_model, write_checkpoint


def test_released_layout_checkpoint_loads_as_the_preset(tmp_path):
    """The rehearsal's stand-in for Qwen2-VL-7B-Instruct: a transformers-4.x folder (flat config,
    legacy weight names, the Instruct generation config) that ``from_pretrained`` reads back."""
    from univg.backbone import BackboneSpec

    folder = write_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    assert "text_config" not in config and config["rope_scaling"]["type"] == "mrope"
    assert json.loads((folder / "generation_config.json").read_text()) == INSTRUCT_GENERATION_CONFIG
    built = stand_in_model().eval()
    loaded = BackboneSpec(preset="tiny", checkpoint=str(folder)).build().eval()
    assert loaded.generation_config.repetition_penalty == 1.05
    ids = torch.tensor([[151644, 872, 198, 9707, 11, 1879, 0]])
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
        assert torch.equal(built(input_ids=ids).logits, logits)
    # it answers briefly: the end token's logit is the one set (a random model never ends)
    assert logits[0, :, 151645].tolist() == pytest.approx([2.75] * 7, abs=0.05)


@pytest.mark.slow
def test_rehearsal_passes(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "rehearsal")])
    out = capsys.readouterr().out
    assert "FAIL" not in out, out
    assert rc == 0
    assert "invariants hold" in out
