"""Known-answer learning: GRPO through ``lightning.Trainer.fit`` learns a reward whose optimum is known.

The policy (:func:`make_peaked_checkpoint`) is the tiny preset with its tied embedding scaled by 14
(a random tiny model samples almost uniformly from 151,936 tokens and never ends a completion) and
the ``<|im_end|>`` row pointed along the mean final hidden state at the prompts' last position,
sized so that the first token is the end token with probability 0.25. The reward is
:class:`StopAtOnce`: 1 for an empty completion (the end token drawn first), 0 otherwise; its optimum
is to stop at once every time. The observable is independent of the module and of its logs: the
share of completions that end at once, counted from the token ids of 128 completions (8 held-out
prompts x 16) sampled from the trained weights with a fixed generator (:func:`held_out_stops`).

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

Not covered: LoRA. No LoRA setting tried learns this reward in tens of steps, so there is no LoRA
run here. Adapters on the decoder layers barely reach the end token's logit at the prompt's last
position, where the residual stream is 14 x the token embedding: a step of norm 0.1 along the
loss gradient raises log p(end token first) by 0.003 for LoRA (q, v, r 8) against 0.6 for full
fine-tuning. Tried (r 8, 8 steps unless said; stop share from 0.24): q, v at lr 3e-3 and 1e-2
(0.24), 3e-2 (0.20); all 7 projections at 1e-2 (0.24). With the final norm scaled instead of the
embedding (the layers then carry the residual stream): q, v at 1e-2 (0.24), 3e-2 (0.01); all 7 at
3e-3 (0.25), 1e-2 (0.00), 5e-3 for 16 steps (0.26), 1e-2 with warm-up for 16 steps (0.23); full
fine-tuning of that policy collapses too (lr >= 1e-3) or stays put (lr <= 3e-4). A LoRA on the
head cannot be the lever either: ``"lm_head"`` in ``LoRASpec.target_modules`` adds no adapter
(``apply_lora``'s pattern matches decoder layers only; the trainable count stays 3,584).

Faults these tests catch (each injected in a working copy, the tests run, the copy discarded):

(a) sign error in the policy-gradient term, univg/rl/loss.py ``grpo_loss_terms``: ``pg = (w *
    torch.min(ratio * adv, clipped * adv)).expand_as(logp)`` (``-w`` made ``w``). Run on the base,
    phi exp, two-micro-batch and negated tests: each learning test fails (stop share 0.242 -> 0.000,
    the policy learns never to stop at once) and the negated control fails (0.242 -> 0.938).
(b) completion mask off by one, univg/rl/rollout/batch.py ``completion_mask``: ``before =
    torch.cumsum(is_end.long(), dim=1)`` (the end token itself left out of the mask, so it is never
    scored and every completion reads as truncated). Run on the same four: the learning tests fail
    (0.242 -> 0.008, 0.000, 0.000); the negated control passes, as it must (it needs no end token).
(c) the reference equal to the moving policy, univg/modules/grpo.py ``GRPOModule.reference``:
    ``yield self.model`` instead of ``yield self.ref_model``. The reference log-probs are then the
    policy's own at scoring time, the KL term and its gradient are 0, and the beta = 5 run is the
    beta = 0 run step for step: ``test_kl_to_the_reference_holds_the_policy_near_its_start`` fails
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

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
EOS = 151645  # <|im_end|>
END_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
MAX_TOKENS = 8
SCALE = 14.0  # the tied embedding is multiplied by it: a peaked policy
GROUP = 8
STEPS = 8
SLOW_STEPS = 16  # the token-normalised loss types (see _variant)
RISE = 0.3  # the held-out stop share must rise by this much (module docstring) ...
FALL = 0.15  # ... and fall by this much with the reward negated
LR = 6e-3
BETA = 5.0  # the KL test's coefficient
KL_MOVED, KL_HELD_SHARE = 0.3, 0.5
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
WORKER_TIMEOUT_S = 420


# ------------------------------------------------------------------------------------------ rewards
class StopAtOnce:
    """``sign`` for an empty completion (the end token drawn first), 0 otherwise."""

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        return [self.sign * float(text == "") for text in completions]


class SilentOnRank(StopAtOnce):
    """:class:`StopAtOnce`, except on process ``rank``, where every ``every``-th call scores every
    completion 0 (one reward per group: with ``drop_zero_variance`` that rank keeps no group)."""

    def __init__(self, rank: int = 1, every: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank, self.every, self.calls = rank, every, 0

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        self.calls += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == self.rank and self.calls % self.every == 0:
            return [0.0] * len(completions)
        return super().__call__(completions, **kwargs)


def stop_reward(cls: str = "StopAtOnce", weight: float = 1.0, **init_args: Any) -> dict[str, Any]:
    """The ``rewards`` entry of a plug-in defined in this file."""
    return {"stop": {"class_path": f"{HERE}:{cls}", "init_args": init_args, "weight": weight}}


# ------------------------------------------------------------------------------------------ policy
def prompts(processor: Any, n: int, seed: int) -> dict[str, torch.Tensor]:
    from univg.data import GroundingCollator
    from univg.data.synthetic import generate_samples
    from univg.rl.rollout import model_inputs

    samples = generate_samples(n, tasks=["single"], image_size=56, seed=seed)
    return model_inputs(GroundingCollator(processor, mode="generate")(samples))


def make_peaked_checkpoint(path: Path, processor: Any, stop_prob: float = 0.25, seed: int = 0) -> Path:
    """A tiny Qwen2-VL checkpoint whose sampled completions repeat a few tokens and that ends at once
    (the end token first) with probability about ``stop_prob``: the tied embedding scaled by 14, the
    end token's row along the mean final hidden state at the prompts' last position, its length set
    by bisection so that the end token's mean probability there is ``stop_prob``."""
    import lightning as L

    from univg.model.backbone import BackboneSpec
    from univg.rl.rollout import generate

    L.seed_everything(seed)
    model = BackboneSpec(preset="tiny").build()
    lm = model.model.language_model
    emb = lm.embed_tokens.weight  # tied with lm_head
    with torch.no_grad():
        emb.mul_(SCALE)
        emb[EOS] = 0.0
    hidden: list[torch.Tensor] = []
    hook = lm.norm.register_forward_hook(lambda mod, args, out: hidden.append(out[:, -1].detach()))
    generate(model, prompts(processor, 16, seed=1000 + seed), processor.tokenizer, max_new_tokens=1)
    hook.remove()
    h = hidden[0]  # [16, H]: the prefill's last position, where the first token is drawn
    with torch.no_grad():
        logits = h @ emb.T  # [16, V]
        logits[:, EOS] = float("-inf")
        others = torch.logsumexp(logits, dim=1)  # [16]
        direction = h.mean(0) / h.mean(0).norm()
        along = h @ direction  # [16]
        lo, hi = 0.0, 100.0
        for _ in range(60):
            c = (lo + hi) / 2
            p = torch.sigmoid(c * along - others).mean()  # the end token's probability there
            lo, hi = (c, hi) if p < stop_prob else (lo, c)
        emb[EOS] = c * direction
    model.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    return path


def completion_length(ids: torch.Tensor) -> torch.Tensor:
    """Tokens before the first end token of each row (``MAX_TOKENS`` when none), from the ids alone."""
    is_end = torch.isin(ids, torch.tensor(END_IDS))
    width = ids.shape[1]
    first = torch.where(is_end, torch.arange(width), width).amin(dim=1)  # [N]
    return first.clamp(max=MAX_TOKENS).float()


def end_inclusive_mask(ids: torch.Tensor) -> torch.Tensor:
    """1 on each row's tokens up to and including its first end token, from the ids alone."""
    return (torch.arange(ids.shape[1])[None] <= completion_length(ids)[:, None]).long()


def sample(model: torch.nn.Module, inputs: dict, tokenizer: Any, seed: int = 123, group: int = 16) -> Any:
    from univg.rl.rollout import generate

    return generate(
        model, inputs, tokenizer, group_size=group, max_new_tokens=MAX_TOKENS, do_sample=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def held_out_stops(model: torch.nn.Module, inputs: dict, tokenizer: Any) -> tuple[float, float]:
    """Share of completions sampled from ``model`` that end at once (no token before the end
    token), counted from the ids, and its standard error."""
    at_once = (completion_length(sample(model, inputs, tokenizer).completion_ids) == 0).float()
    share = float(at_once.mean())
    return share, (share * (1 - share) / at_once.numel()) ** 0.5


def kl_to(model: torch.nn.Module, reference: torch.nn.Module, inputs: dict, tokenizer: Any) -> float:
    """KL(model || reference) per completion, estimated on completions sampled from ``model``: the
    mean over completions of the summed log-ratio of their tokens (up to the first end token)."""
    from univg.rl.rollout import completion_logprobs

    r = sample(model, inputs, tokenizer, seed=321)
    mask = end_inclusive_mask(r.completion_ids)
    with torch.no_grad():
        lp = completion_logprobs(model, r.prompt, r.completion_ids, mask, 16, shared_prefix=False)
        lp0 = completion_logprobs(reference, r.prompt, r.completion_ids, mask, 16, shared_prefix=False)
    return float(((lp - lp0) * mask).sum(1).mean())


# ------------------------------------------------------------------------------------------ training
def record_steps() -> Any:
    """A callback keeping what the module logged at each optimiser step (its own view, secondary)."""
    import lightning as L

    class Record(L.Callback):
        def __init__(self) -> None:
            self.steps: dict[int, dict[str, float]] = {}

        def on_train_batch_end(self, trainer, module, *args) -> None:
            logs = getattr(module, "last_step_logs", None)
            if logs is not None:
                self.steps[trainer.global_step] = {k: float(v) for k, v in logs.items()}

    return Record()


def train(
    checkpoint: Path,
    processor: Any,
    *,
    steps: int = STEPS,
    seed: int = 0,
    batch_size: int = 2,
    backbone: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] = (),
    trainer_kwargs: dict[str, Any] | None = None,
    **module_kwargs: Any,
) -> tuple[Any, list[dict[str, float]]]:
    """Seeded GRPO on ``steps`` optimiser steps of 2 prompts (``batch_size`` per micro-batch) from
    the peaked checkpoint; returns the trained module and the module's per-step logs."""
    import lightning as L

    from univg.data import SyntheticDataModule
    from univg.model.backbone import BackboneSpec
    from univg.modules import GRPOModule

    L.seed_everything(seed)
    settings: dict[str, Any] = dict(
        lr=LR, warmup_ratio=0.0, schedule="constant", group_size=GROUP, max_completion_length=MAX_TOKENS,
        beta=0.0, phi="none", prompts_per_step=2, log_completions_every=0, rewards=stop_reward(),
    )  # fmt: skip
    settings.update(module_kwargs)
    spec = BackboneSpec(preset="tiny", checkpoint=str(checkpoint), **(backbone or {}))
    module = GRPOModule(backbone=spec, **settings)
    module._tokenizer = processor.tokenizer  # the checkpoint's tokenizer is this one; not reloaded per run
    data = SyntheticDataModule(
        num_train=steps * settings["prompts_per_step"], num_val=0, tasks=["single"],
        image_size=56, train_mode="generate", batch_size=batch_size, shuffle=False, seed=seed,
    )  # fmt: skip
    data._processor = processor
    record = record_steps()
    trainer = L.Trainer(
        **{
            "max_steps": steps, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "callbacks": [record, *callbacks], **(trainer_kwargs or {}),
        }
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module, [record.steps[k] for k in sorted(record.steps)]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, processor) -> Path:
    return make_peaked_checkpoint(tmp_path_factory.mktemp("peaked") / "hf", processor)


@pytest.fixture(scope="module")
def held_out(processor) -> dict[str, torch.Tensor]:
    return prompts(processor, 8, seed=777)  # the training prompts use seed 0


@pytest.fixture(scope="module")
def initial(checkpoint) -> torch.nn.Module:
    from univg.model.backbone import BackboneSpec

    return BackboneSpec(preset="tiny", checkpoint=str(checkpoint)).build().eval()


@pytest.fixture(scope="module")
def start(initial, held_out, processor) -> tuple[float, float]:
    """The initial policy's held-out share of completions that end at once, and its standard error."""
    share, sem = held_out_stops(initial, held_out, processor.tokenizer)
    assert 0.15 < share < 0.35, share  # room to rise and to fall
    return share, sem


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
    end, end_sem = held_out_stops(model, held_out, tokenizer)
    report = f"held-out stop share {start[0]:.3f} -> {end:.3f} (sem {end_sem:.3f})"
    print(report)
    assert end >= start[0] + RISE, report


def assert_logged_rise(logs: list[dict[str, float]], steps: int = STEPS) -> None:
    """The module's own view agrees in direction (its log; secondary to the held-out measure)."""
    rewards = [s["reward/total_mean"] for s in logs]
    assert len(rewards) == steps and sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards


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
        held = prompts(processor, 8, seed=777)
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
