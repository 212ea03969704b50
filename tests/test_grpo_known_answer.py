"""Known-answer learning: GRPO through ``lightning.Trainer.fit`` learns a reward whose optimum is known.

The policy, reward and observable are those of :mod:`known_answer_policy`. The policy
(:func:`make_peaked_checkpoint`) is the tiny preset with its tied embedding scaled by 14 (a random
tiny model samples almost uniformly from 151,936 tokens and never ends a completion) and the
``<|im_end|>`` row pointed along the mean final hidden state at the prompts' last position, sized
so that the first token is the end token with probability 0.25. The reward is :class:`StopAtOnce`:
1 for an empty completion (the end token drawn first), 0 otherwise; its optimum is to stop at once
every time. The observable is independent of the module and of its logs: the share of completions
that end at once, counted from the token ids of 128 completions (8 held-out prompts x 16) sampled
from the trained weights with a fixed generator (:func:`held_out_stops`).

Each run is 8 optimiser steps of 2 prompts x G = 8 completions of at most 8 tokens, lr 6e-3, one
axis changed from the base run (phi none, loss grpo, ``SharedPrefill``, full fine-tuning, one
micro-batch per step, beta 0). The token-normalised loss types (bnpo, dapo) and dr_grpo weigh a
completion by its tokens, so the 1-token completions that stop at once count 1/8 of an 8-token one
and learn this reward slower: they run ``SLOW_STEPS`` = 16 steps (at 2 x lr they collapse to never
stopping at once, on seeds 0, 1 and 2). Held-out stop share, start 0.242 (standard error 0.038):

======================  ====================  ==================================================
run                     seed 0 / 1 / 2        note
======================  ====================  ==================================================
base                    0.94 / 0.89 / 0.94
phi exp                 0.91 / - / -          phi from each group's stop share (``miou_reward``)
bnpo, 16 steps          0.73 / 0.73 / -       12 steps: 0.64 / 0.50
dapo, 16 steps          0.73 / - / -          the same update as bnpo in one micro-batch
dr_grpo, 16 steps       0.77 / - / -          12 steps: 0.73 / 0.64
HFGenerate              0.95 / - / -
2 micro-batches         0.91 / - / -
beta 5 (KL test)        0.27 / 0.26 / 0.26    KL to the initial policy 0.26 / 0.19 / 0.11,
                                              base run 1.07 / 1.05 / 1.13
reward negated          0.00 / 0.00 / 0.00
DDP (2 ranks)           0.88 / - / -          drop_zero_variance; rank 1 keeps no group on
FSDP2 (2 ranks)         0.89 / - / -          steps 1, 3, 5, 7 (DDP: also 6)
======================  ====================  ==================================================

A run must end at least ``RISE`` = 0.3 above the start. The base runs rise by 0.65-0.70 with a
spread across seeds of 0.03 and held-out standard errors of 0.04 (start) and 0.02-0.03 (end): the
threshold is about 6 sigma below what they give and 5 sigma above what no learning gives. The
slowest variants are nearer: bnpo ends 0.49 above the start on seeds 0 and 1, about 3.5 sigma
above the threshold. The negated reward must end at least ``FALL`` = 0.15 below the start (it
ends at 0). The KL test's run with ``BETA`` = 5 must end with less than half the base run's KL to
the initial policy (measured: a tenth to a quarter of it).

LoRA has its own tests, ``test_grpo_known_answer_lora.py``, on this policy with one change: there
the end token's row is turned 70 degrees off the final hidden state. Here it points along that
state, where its logit is already at a maximum over the state's directions (RMSNorm fixes the
state's norm): only the head (the tied embedding) can raise it, and ``apply_lora`` puts adapters on
the decoder layers only, so no LoRA setting tried learns this policy (that file lists them).

Faults these tests catch (each injected in a working copy, the tests run, the copy discarded):

(a) sign error in the policy-gradient term, univg/rl/loss.py ``grpo_loss_terms``: ``pg = (w *
    torch.min(ratio * adv, clipped * adv)).expand_as(logp)`` (``-w`` made ``w``). Run on the base,
    phi exp, two-micro-batch and negated tests: each learning test fails (stop share 0.242 -> 0.000,
    the policy learns never to stop at once) and the negated control fails (0.242 -> 0.938).
(b) completion mask off by one, univg/rl/rollout/batch.py ``completion_mask``: ``before =
    torch.cumsum(is_end.long(), dim=1)`` (the end token itself left out of the mask, so it is never
    scored and every completion reads as truncated). Run on the same four: the learning tests fail
    (0.242 -> 0.008, 0.000, 0.000); the negated control passes, as it must (it needs no end token).
(c) the reference equal to the moving policy, univg/modules/grpo/reference.py
    ``ReferencePolicy.reference``: ``yield self.model`` instead of ``yield self.ref_model``. The
    reference log-probs are then the policy's own at scoring time, the KL term and its gradient are
    0, and the beta = 5 run is the beta = 0 run step for step:
    ``test_kl_to_the_reference_holds_the_policy_near_its_start`` fails
    with the two KLs equal (1.067 and 1.067).

The two-process tests run a ``torchrun`` worker of this file: 2 gloo ranks, one prompt each per
step, ``drop_zero_variance``, beta 0.04 (the reference pass too), and a reward that is constant on
rank 1 every other step (:class:`SilentOnRank`), so that rank keeps no group on those steps while
rank 0 trains on its own. A rank that keeps no group must still make the step's collective passes;
the process group's timeout (``COLLECTIVE_TIMEOUT``) turns a missed collective into a failure in
about 1.5 minutes (measured at f5041ce, before ranks that keep fewer groups were padded: DDP
"Application timeout caused pair closure", FSDP2 "Timed out waiting 60000ms for send operation"),
and the subprocess is killed whole past ``WORKER_TIMEOUT_S``. Since that fix both pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from known_answer_policy import (
    STEPS,
    assert_logged_rise,
    held_out_prompts,
    held_out_stops,
    kl_to,
    load_policy,
    make_peaked_checkpoint,
    report,
    starting_share,
    stop_reward,
    train,
)

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
SLOW_STEPS = 16  # the token-normalised loss types (see _variant)
RISE = 0.3  # the held-out stop share must rise by this much (module docstring) ...
FALL = 0.15  # ... and fall by this much with the reward negated
BETA = 5.0  # the KL test's coefficient
KL_MOVED, KL_HELD_SHARE = 0.3, 0.5
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
WORKER_TIMEOUT_S = 420


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, processor) -> Path:
    return make_peaked_checkpoint(tmp_path_factory.mktemp("peaked") / "hf", processor)


@pytest.fixture(scope="module")
def held_out(processor) -> dict[str, torch.Tensor]:
    return held_out_prompts(processor)


@pytest.fixture(scope="module")
def initial(checkpoint) -> torch.nn.Module:
    return load_policy(checkpoint)


@pytest.fixture(scope="module")
def start(initial, held_out, processor) -> tuple[float, float]:
    return starting_share(initial, held_out, processor.tokenizer)


@pytest.fixture(scope="module")
def base_run(checkpoint, processor):
    """beta 0, phi none, loss grpo, SharedPrefill, full fine-tuning, one micro-batch per step."""
    return train(checkpoint, processor)


VARIANTS = ["phi_exp", "bnpo", "dr_grpo", "dapo", "hf_generate", "two_micro_batches"]


def _variant(name: str) -> dict[str, Any]:
    from univg.engines import HFGenerate

    return {
        "phi_exp": dict(phi="exp", miou_reward="stop"),  # phi from each group's stop share
        # these weigh a completion by its tokens (bnpo, dapo) or sum them (dr_grpo): the 1-token
        # ones that stop at once count 1/8 of an 8-token one, so they learn it slower (at 2 x lr
        # they collapse to never stopping at once, every seed)
        "bnpo": dict(loss_type="bnpo", steps=SLOW_STEPS),
        "dr_grpo": dict(loss_type="dr_grpo", steps=SLOW_STEPS),
        "dapo": dict(loss_type="dapo", steps=SLOW_STEPS),
        "hf_generate": dict(engine=HFGenerate()),
        "two_micro_batches": dict(batch_size=1),  # prompts_per_step 2 = 2 x batch_size
    }[name]


def assert_learned(
    model: torch.nn.Module, start: tuple[float, float], held_out: dict, tokenizer: Any
) -> None:
    end = report(start, model, held_out, tokenizer)
    assert end >= start[0] + RISE, (start, end)


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_base_run_learns_to_stop(base_run, start, held_out, processor):
    module, logs = base_run
    assert_learned(module.model, start, held_out, processor.tokenizer)
    assert_logged_rise(logs)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_axis_learns_to_stop(variant, checkpoint, processor, start, held_out):
    kwargs = _variant(variant)
    module, logs = train(checkpoint, processor, **kwargs)
    if variant == "two_micro_batches":
        assert module.micro_batches_per_step(1) == 2
    if variant == "phi_exp":  # the weights followed the groups' stop shares: not one constant
        assert len({round(s["difficulty/phi_mean"], 6) for s in logs}) > 1, logs
    assert_learned(module.model, start, held_out, processor.tokenizer)
    assert_logged_rise(logs, kwargs.get("steps", STEPS))


@pytest.mark.slow
def test_negated_reward_moves_the_other_way(checkpoint, processor, start, held_out):
    module, _ = train(checkpoint, processor, rewards=stop_reward(sign=-1.0))
    end, end_sem = held_out_stops(module.model, held_out, processor.tokenizer)
    report = f"held-out stop share {start[0]:.3f} -> {end:.3f} (sem {end_sem:.3f})"
    print(report)
    assert end <= start[0] - FALL, report


@pytest.mark.slow
def test_kl_to_the_reference_holds_the_policy_near_its_start(
    base_run, checkpoint, processor, initial, held_out
):
    """beta = BETA against beta = 0 (the base run), same seed and data: the KL term pulls towards
    the frozen initial policy, so the trained policy ends measurably closer to it (KL measured on
    fresh samples, with the initial policy rebuilt from the checkpoint) and stops at once less often."""
    free, _ = base_run
    held, logs = train(checkpoint, processor, beta=BETA)
    tok = processor.tokenizer
    kl_free, kl_held = kl_to(free.model, initial, held_out, tok), kl_to(held.model, initial, held_out, tok)
    assert kl_free > KL_MOVED, kl_free  # the free policy moved
    assert kl_held < KL_HELD_SHARE * kl_free, (kl_held, kl_free)
    stops_free, _ = held_out_stops(free.model, held_out, tok)
    stops_held, _ = held_out_stops(held.model, held_out, tok)
    print(
        f"KL to the initial policy {kl_held:.3f} (beta {BETA}) vs {kl_free:.3f} (beta 0); stop share {stops_held:.3f} vs {stops_free:.3f}"
    )
    assert stops_held < stops_free - 0.2, (stops_held, stops_free)
    assert max(s["train/kl"] for s in logs) > 0.0


# ------------------------------------------------------------------------------------------ two processes
def _flat_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole (a collective under FSDP: every rank calls it)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = t.detach().float().cpu()
    return out


def _worker(mode: str, out: Path, checkpoint: Path) -> None:  # pragma: no cover - torchrun children
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    from univg.distributed import FSDP2Strategy
    from univg.model.backbone import BackboneSpec
    from univg.model.tokenizer import load_processor

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    processor = load_processor()
    if mode == "ddp":
        strategy = DDPStrategy(process_group_backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    else:
        strategy = FSDP2Strategy(process_group_backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    state: dict[str, torch.Tensor] = {}

    class Gather(L.Callback):
        def on_train_end(self, trainer, module) -> None:
            state.update(_flat_state(module.model))

    module, logs = train(
        checkpoint, processor, batch_size=1, beta=0.04, drop_zero_variance=True,
        rewards=stop_reward("SilentOnRank", rank=1, every=2),
        callbacks=(Gather(),), trainer_kwargs={"devices": 2, "strategy": strategy},
    )  # fmt: skip
    record: dict[str, Any] = {
        "rank": rank,
        "dropped": [s.get("completions/dropped_groups", 0.0) for s in logs],
        "kept": [s["completions/count"] for s in logs],
    }
    if rank == 0:
        trained = BackboneSpec(preset="tiny", checkpoint=str(checkpoint)).build()
        missing, unexpected = trained.load_state_dict(state, strict=False)
        record["load"] = [sorted(missing), sorted(unexpected)]  # the tied head is the embedding
        held = held_out_prompts(processor)
        record["stops"] = held_out_stops(trained, held, processor.tokenizer)
    (out / f"{mode}_rank{rank}.json").write_text(json.dumps(record))


def _run_workers(mode: str, out: Path, checkpoint: Path) -> list[dict[str, Any]]:
    """Two gloo ranks of this file under ``torchrun``; killed whole (process group) past the limit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE), "worker", mode, str(out), str(checkpoint),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{mode}: the two ranks did not finish in {WORKER_TIMEOUT_S} s:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{mode} workers failed:\n{stdout[-2000:]}\n{stderr[-6000:]}"
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_uneven_kept_groups_under_two_ranks(mode, checkpoint, start, tmp_path):
    """2 gloo ranks, 1 prompt each per step, ``drop_zero_variance``: rank 1 keeps no group every
    other step while rank 0 keeps its own; the step still trains (beta > 0: the reference pass too)
    and the policy learns to stop. Fails in about ``COLLECTIVE_TIMEOUT`` if a rank skips a collective
    the other waits in."""
    ranks = _run_workers(mode, tmp_path, checkpoint)
    r0, r1 = ranks
    assert len(r0["dropped"]) == len(r1["dropped"]) == STEPS
    silent = [i for i in range(STEPS) if r1["dropped"][i] == 1.0 and r1["kept"][i] == 0.0]
    assert len(silent) >= STEPS // 2 - 1, r1  # rank 1 kept nothing on these steps ...
    assert any(r0["kept"][i] > 0 for i in silent), r0  # ... while rank 0 trained on its group
    assert set(r0["load"][0]) <= {"lm_head.weight"} and not r0["load"][1], r0["load"]
    end, end_sem = r0["stops"]
    report = (
        f"{mode}: held-out stop share {start[0]:.3f} -> {end:.3f} (sem {end_sem:.3f}); silent steps {silent}"
    )
    print(report)
    assert end >= start[0] + RISE, report


if __name__ == "__main__":  # torchrun worker: worker MODE OUT CHECKPOINT
    _worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
