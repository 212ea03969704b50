"""Two CPU processes (gloo) fitting the SFT module: DDP replicas agree; FSDP2 shards, matches DDP,
builds each rank's shard of the single-process weights, reads a Hugging Face folder's rows, saves a
sharded checkpoint and resumes from it. Each scenario runs tests/distributed_worker.py under
``torchrun``; the GRPO module under FSDP2: tests/test_distributed_grpo.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from distributed_worker import STEPS, run
from torchrun_helpers import ROOT, flat_params, replicated


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """DDP, then FSDP2 (saving a sharded checkpoint), then FSDP2 resumed from it."""
    out = tmp_path_factory.mktemp("dist")
    return {mode: run(mode, out) for mode in ("ddp", "fsdp", "resume")} | {"out": out}


@pytest.mark.slow
def test_ddp_replicas_are_identical_after_training(runs):
    ddp = runs["ddp"]
    assert all(len(r["losses"]) == STEPS for r in ddp)
    assert ddp[0]["losses"] != ddp[1]["losses"]  # each rank saw its own batches ...
    assert ddp[0]["max_rank_diff"] == 0.0  # ... and the all-reduced update kept them in lockstep
    assert not ddp[0]["sharded"]


@pytest.mark.slow
def test_fsdp_shards_every_parameter_across_ranks(runs):
    fsdp = runs["fsdp"]
    assert fsdp[0]["sharded"] and fsdp[1]["sharded"]
    names = fsdp[0]["shards"].keys()
    assert len(names) > 20
    for name in names:
        (l0, full), (l1, full1) = fsdp[0]["shards"][name], fsdp[1]["shards"][name]
        assert full == full1
        if replicated(name):  # frozen, outside every unit: whole on both ranks
            assert l0 == l1 == full, name
            continue
        # dim-0 sharding: each rank holds a part, together exactly the whole
        assert l0 + l1 == full, name
        if full > 1:
            assert 0 < l0 < full, name
    # the tied 151,936 x 64 embedding trains (full fine-tuning): split in two halves
    emb = [n for n in names if n.endswith("embed_tokens.weight")][0]
    assert fsdp[0]["shards"][emb] == [75968 * 64, 151936 * 64]
    # what the two ranks store together: the model once, plus the replicated part a second time
    b0, b1 = fsdp[0]["state_bytes"], fsdp[1]["state_bytes"]
    total = sum(full for _, full in fsdp[0]["shards"].values()) * 4
    whole = sum(full for n, (_, full) in fsdp[0]["shards"].items() if replicated(n)) * 4
    assert 0 < whole < 0.1 * total
    assert b0["parameters"] + b1["parameters"] == total + whole


@pytest.mark.slow
def test_fsdp_ranks_materialise_only_their_shard_of_the_single_process_weights(runs):
    """Built on meta, each rank filled only its rows, and those rows are the weights one process
    builds with the same seed (the random draws replayed in the same order), bit for bit."""
    import lightning as L

    from univg.model.backbone import BackboneSpec

    fsdp = runs["fsdp"]
    total = sum(full for _, full in fsdp[0]["shards"].values()) * 4  # fp32 bytes of the whole model
    whole = sum(full for n, (_, full) in fsdp[0]["shards"].items() if replicated(n)) * 4
    for r in fsdp:
        # about half of the sharded part each (dim-0 chunks: at most one row more than half per
        # tensor), plus the replicated frozen part whole
        half = (total - whole) / 2 + whole
        assert abs(r["start_param_bytes"] - half) < 0.001 * total, r["start_param_bytes"]
        assert r["tied"]  # the tied head is still the embedding's parameter
    assert fsdp[0]["start_param_bytes"] + fsdp[1]["start_param_bytes"] == total + whole
    L.seed_everything(0)
    single = flat_params(BackboneSpec(preset="tiny").build())
    assert torch.equal(torch.load(runs["out"] / "fsdp_start_params.pt"), single)


@pytest.mark.slow
def test_fsdp_step_matches_ddp(runs):
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    for r in (0, 1):
        # step 1: same init, same batch; step 2: after the same update
        assert fsdp[r]["losses"] == pytest.approx(ddp[r]["losses"], rel=1e-5, abs=1e-6)
    assert fsdp[0]["max_rank_diff"] == 0.0  # the gathered full parameters agree across ranks
    a = torch.load(runs["out"] / "ddp_final_params.pt")
    b = torch.load(runs["out"] / "fsdp_final_params.pt")
    assert float((a - b).abs().max()) < 1e-5


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_resumes(runs):
    ckpt = runs["out"] / "ckpt" / "last.ckpt"
    assert ckpt.is_dir()  # one shard file per rank plus metadata
    assert len(list(ckpt.glob("*.distcp"))) == 2 and (ckpt / "meta.pt").is_file()
    # written as .last.ckpt.partial and put in place whole: nothing of the write is left beside it
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")) == []
    resume = runs["resume"]
    for r in resume:
        assert r["start_step"] == STEPS
        assert r["start_matches_saved"]  # weights exactly as saved
        assert r["optimizer_steps"] == [float(STEPS)]  # AdamW moments and step counts restored
        assert len(r["losses"]) == 1  # then trains the one remaining step


@pytest.mark.slow
def test_sharded_checkpoint_consolidates_for_init_checkpoint(runs, tmp_path):
    from univg.model.backbone import BackboneSpec
    from univg.model.checkpoints import load_model_weights

    # the command make/grid.mk runs on a sharded run's last checkpoint
    out = tmp_path / "weights.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "univg.sharded_checkpoint",
        "weights",
        str(runs["out"] / "ckpt" / "last.ckpt"),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr[-3000:]
    state = torch.load(out, weights_only=False)
    assert state["global_step"] == STEPS and "optimizer_states" not in state
    model = BackboneSpec(preset="tiny").build()
    load_model_weights(model, out)  # how stage 2 starts from a sharded stage-1 run
    assert torch.equal(flat_params(model), torch.load(runs["out"] / "fsdp_final_params.pt"))


@pytest.mark.slow
def test_fsdp_reads_each_rank_rows_of_a_hf_checkpoint(tmp_path):
    """``backbone.checkpoint`` under FSDP: the safetensors rows each rank reads make up exactly the
    model ``from_pretrained`` loads in one process (released key names, tied head stored once)."""
    import lightning as L

    from univg.model.backbone import BackboneSpec, load_pretrained
    from univg.model.tokenizer import load_tokenizer

    L.seed_everything(1)  # other weights than the seed-0 random init the worker would draw
    BackboneSpec(preset="tiny").build().save_pretrained(tmp_path / "hf")
    load_tokenizer().save_pretrained(tmp_path / "hf")
    ranks = run("hf", tmp_path)
    assert all(r["sharded"] and r["tied"] for r in ranks)
    loaded = flat_params(load_pretrained(tmp_path / "hf"))
    assert torch.equal(torch.load(tmp_path / "hf_start_params.pt"), loaded)
