"""One GRPO optimiser step, ours against TRL's ``GRPOTrainer``, on the same model, data and settings.

Three variants run in one invocation, each in its own process (a clean peak RSS, no monkeypatch
leaking between them):

- ``ours``: :class:`univg.modules.GRPOModule` ``score`` (shared-prefill rollout, rewards,
  advantages, reference log-probs) then ``loss_terms`` + backward + clip + AdamW, i.e. what
  ``GRPOModule.optimise`` runs for a one-micro-batch step.
- ``trl``: TRL 1.16 ``GRPOTrainer`` as shipped (on CPU it pushes every prompt position through the
  151,936-way head: its compact path needs Triton).
- ``trl-completion-only``: the same trainer with completion-only scoring forced
  (``trl.trainer.utils._use_triton`` patched to say yes, which selects its compact path).
- ``ours-unshared`` (ablation, on request): our step with ``engine="hf"`` and
  ``shared_prefix=False``, i.e. without the work shared across a group.

Aligned explicitly (docs/design.md section 10 lists TRL's defaults that differ): loss type grpo,
``scale_rewards`` group, fp32 (bf16 off), gradient checkpointing off, dropout off, beta 0.04 with a
frozen reference copy of the initial policy, num_iterations 1 (no old-policy pass), vision tower
frozen, lr 1e-6 constant, weight decay 0, grad-norm clip 1.0, AdamW, temperature 1 / top-p 1 /
top-k off, the image token suppressed, completions forced to exactly ``--completion-length`` tokens
(end tokens suppressed before that), the same prompts (chat template, 4 synthetic 112 x 112 images
each) and the same rewards (accuracy + format from :mod:`univg.rl.rewards`).

Usage::

    python benchmarks/grpo_step.py                  # 1 warm-up + 5 measured steps per variant
    python benchmarks/grpo_step.py --quick          # 1 + 1 steps, short completions (smoke test)
    python benchmarks/grpo_step.py --threads 2 --steps 3 --variants ours,trl-completion-only

Prints the settings, then per variant: seconds per step (median of the measured steps, with min
and max), completions/s, tokens/s (prompt tokens x G + completion tokens), the share of the step in
generation / log-prob passes / backward / other (rewards, advantages, optimiser, data), peak RSS,
and the ratios ours / TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("ours", "trl", "trl-completion-only")
#: Ablation, not run by default: our step without the shared work (HF ``generate`` with the prompt
#: repeated G times, log-prob passes over repeated prompts with the full [rows, C, V] logits).
ABLATIONS = ("ours-unshared",)
TASK = "common_object"  # a task whose image count is settable


# ------------------------------------------------------------------------------------------ setup
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "preset": args.preset,
        "tied_head": args.tied,
        "prompts_per_step": args.prompts,
        "group_size": args.group_size,
        "completions_per_step": args.prompts * args.group_size,
        "completion_length": args.completion_length,
        "images_per_prompt": args.images,
        "image_size": args.image_size,
        "beta": args.beta,
        "loss_type": "grpo",
        "dtype": "float32",
        "gradient_checkpointing": False,
        "threads": args.threads,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
    }


def _model(args: argparse.Namespace) -> Any:
    import torch

    from univg.model.backbone import BackboneSpec

    torch.manual_seed(0)
    spec = BackboneSpec(preset=args.preset, overrides={"tie_word_embeddings": args.tied})
    return spec, spec.build()


def _samples(args: argparse.Namespace) -> list[Any]:
    from univg.data.synthetic import generate_samples

    n = args.prompts * (args.warmup + args.steps)
    return generate_samples(n, tasks=[TASK], image_size=args.image_size, seed=0, num_images=args.images)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class _Clock:
    """Accumulates seconds per category; ``lap`` wraps a function so its calls are timed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, key: str, dt: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + dt

    def wrap(self, key: str, fn: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(key, time.perf_counter() - t0)

        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


# ------------------------------------------------------------------------------------------ ours
def run_ours(args: argparse.Namespace, shared: bool = True) -> dict[str, Any]:
    import functools

    import torch

    import univg.modules.grpo as grpo_mod
    from univg.data import GroundingCollator
    from univg.engines import RolloutEngine
    from univg.model.tokenizer import load_processor
    from univg.modules import GRPOModule
    from univg.rl.rollout import generate

    spec, model = _model(args)
    processor = load_processor()
    collate = GroundingCollator(processor, mode="generate")
    samples = _samples(args)
    module = GRPOModule(
        backbone=spec,
        lr=1e-6,
        group_size=args.group_size,
        max_completion_length=args.completion_length,
        beta=args.beta,
        phi="none",
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        prompts_per_step=args.prompts,
    )
    module.model = model
    module.configure_model()  # frozen reference copy (beta > 0)
    module.train()
    clock = _Clock()
    # completions forced to the full length, as in the TRL runs (min_new_tokens)
    engine = {} if shared else {"engine": "hf"}
    forced = clock.wrap(
        "generation", functools.partial(generate, min_new_tokens=args.completion_length, **engine)
    )

    class Forced(RolloutEngine):  # our decoders, completions forced to the full length
        def generate(self, model, inputs, tokenizer, sampling, *, record_logprobs=False):
            return forced(model, inputs, tokenizer, **sampling.generate_kwargs())

    module.engine = Forced()
    if not shared:  # the module decides once for its three passes; a partial would be overridden
        module.shared_prefix = lambda: False
    grpo_mod.completion_logprobs = clock.wrap("logprob_passes", grpo_mod.completion_logprobs)
    params = [p for p in module.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0, fused=True)
    rss_before = _rss_gb()
    steps = []
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = collate(samples[i * args.prompts : (i + 1) * args.prompts])
        scored = module.score(batch)
        terms = module.loss_terms(scored)
        t1 = time.perf_counter()
        terms.loss.backward()
        clock.add("backward", time.perf_counter() - t1)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        r = scored.rollout
        steps.append(
            {
                "seconds": dt,
                "cpu_seconds": time.process_time() - c0,
                "parts": clock.take(),
                "completions": int(r.completion_ids.shape[0]),
                "completion_tokens": int(r.completion_mask.sum()),
                "prompt_tokens": int(r.prompt["attention_mask"].sum()) * args.group_size,
                "loss": float(terms.loss),
            }
        )
    # which log-prob path ran (the ablation must take the plain one)
    out = {"steps": steps, "rss_before_gb": rss_before, "peak_rss_gb": _rss_gb()}
    return out | {"shared_prefix": module.shared_prefix()}


# ------------------------------------------------------------------------------------------ TRL
def _trl_processor(processor: Any) -> Any:
    """TRL wants a transformers ``ProcessorMixin``; transformers 5.24's ``Qwen2VLProcessor`` cannot be
    built without torchvision (its video processor), so this adapter serves the calls TRL makes with
    univg's exact tokenizer and image processor (the same prompt tokens and pixels as ours)."""
    import torch
    from transformers import ProcessorMixin

    class UnivgTRLProcessor(ProcessorMixin):
        def __init__(self, inner: Any) -> None:  # the base __init__ validates sub-processor classes
            self.inner = inner
            self.tokenizer = inner.tokenizer
            self.image_processor = inner.image_processor
            self.chat_template = inner.tokenizer.chat_template

        @staticmethod
        def _images(conversations: list[list[dict]]) -> list[Any]:
            return [
                part["image"]
                for conv in conversations
                for msg in conv
                if isinstance(msg.get("content"), list)
                for part in msg["content"]
                if part.get("type") == "image" and part.get("image") is not None
            ]

        def apply_chat_template(  # type: ignore[override]
            self,
            conversation: Any,
            add_generation_prompt: bool = False,
            tokenize: bool = False,
            return_dict: bool = False,
            **_: Any,
        ) -> Any:
            batched = bool(conversation) and isinstance(conversation[0], list)
            convs = conversation if batched else [conversation]
            texts = [
                self.inner.apply_chat_template(c, add_generation_prompt=add_generation_prompt) for c in convs
            ]
            if not tokenize:
                return texts if batched else texts[0]
            enc = self.inner(texts, self._images(convs) or None, padding_side="left")
            keep = enc["attention_mask"].bool()
            ids = [row[m].tolist() for row, m in zip(enc["input_ids"], keep)]
            if not return_dict:
                return ids
            out: dict[str, Any] = {"input_ids": ids}
            if "pixel_values" in enc:
                out["pixel_values"] = enc["pixel_values"]
                out["image_grid_thw"] = enc["image_grid_thw"]
                out["mm_token_type_ids"] = [row[m].tolist() for row, m in zip(enc["mm_token_type_ids"], keep)]
            return out

        def __call__(self, images: Any = None, text: Any = None, **_: Any) -> dict[str, torch.Tensor]:
            flat = [im for group in images for im in (group or [])] if images else None
            return self.inner(text, flat or None, padding_side="left")

        def batch_decode(self, *a: Any, **kw: Any) -> list[str]:
            return self.tokenizer.batch_decode(*a, **kw)

        def decode(self, *a: Any, **kw: Any) -> str:
            return self.tokenizer.decode(*a, **kw)

    return UnivgTRLProcessor(processor)


def run_trl(args: argparse.Namespace, completion_only: bool) -> dict[str, Any]:
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from univg.core.boxes import get_frame
    from univg.core.prompts import build_messages
    from univg.data import GroundingCollator
    from univg.model.presets import PRESET_FRAMES
    from univg.model.tokenizer import load_processor
    from univg.rl.rewards import compute_rewards

    if completion_only:
        # TRL scores only the completion positions on its compact path, which it takes only with Triton
        trl_utils._use_triton = lambda device: True
    spec, model = _model(args)
    processor = load_processor()
    frame = get_frame(PRESET_FRAMES[args.preset])
    boxes_of = GroundingCollator(processor, mode="generate")
    samples = _samples(args)
    rows = []
    for s in samples:
        box = boxes_of([s])["boxes"][0].tolist()  # model frame, exactly what our module rewards against
        rows.append({"prompt": build_messages(s, "reasoning"), "images": list(s.images), "box": box})

    def _texts(completions: list[Any]) -> list[str]:
        return [c[0]["content"] if isinstance(c, list) else c for c in completions]

    def accuracy(prompts: Any, completions: Any, box: Any, **_: Any) -> list[float]:
        return compute_rewards({"accuracy": 1.0}, _texts(completions), box, frame=frame)["accuracy"].tolist()

    def format_reward(prompts: Any, completions: Any, box: Any, **_: Any) -> list[float]:
        return compute_rewards({"format": 1.0}, _texts(completions), box, frame=frame)["format"].tolist()

    tmp = tempfile.mkdtemp(prefix="univg_trl_bench_")
    # A model object with beta > 0 makes TRL rebuild the reference from an empty name: save and pass a path
    model.save_pretrained(os.path.join(tmp, "model"))
    n_total = args.warmup + args.steps
    config = GRPOConfig(
        output_dir=os.path.join(tmp, "out"),
        per_device_train_batch_size=args.prompts * args.group_size,
        gradient_accumulation_steps=1,
        num_generations=args.group_size,
        max_completion_length=args.completion_length,
        generation_kwargs={"min_new_tokens": args.completion_length},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=args.beta,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_steps=n_total,
        logging_steps=10**6,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        shuffle_dataset=False,
        seed=0,
        model_init_kwargs={"dtype": "float32"},
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=os.path.join(tmp, "model"),
        reward_funcs=[accuracy, format_reward],
        args=config,
        train_dataset=Dataset.from_list(rows),  # images stored as PNG: lossless
        processing_class=_trl_processor(processor),
    )
    trainer.model.model.visual.requires_grad_(False)  # frozen vision tower, as ours (paper default)
    clock = _Clock()
    trainer._generate = clock.wrap("generation", trainer._generate)
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        "logprob_passes", trainer._get_per_token_logps_and_entropies
    )
    trainer.accelerator.backward = clock.wrap("backward", trainer.accelerator.backward)
    steps: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    orig_prepare = trainer._generate_and_score_completions

    def prepare(inputs: list[dict]) -> dict[str, Any]:
        out = orig_prepare(inputs)
        seen["completions"] = int(out["completion_ids"].shape[0])
        seen["completion_tokens"] = int(out["completion_mask"].sum())
        seen["prompt_tokens"] = int(out["prompt_mask"].sum())  # TRL holds one prompt copy per completion
        return out

    trainer._generate_and_score_completions = prepare

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            steps.append({"seconds": wall, "cpu_seconds": cpu, "parts": clock.take(), **seen})

    trainer.add_callback(StepTimer())
    rss_before = _rss_gb()
    trainer.train()
    return {"steps": steps, "rss_before_gb": rss_before, "peak_rss_gb": _rss_gb()}


# ------------------------------------------------------------------------------------------ report
def summarise(name: str, result: dict[str, Any], warmup: int) -> dict[str, Any]:
    measured = result["steps"][warmup:] or result["steps"]
    secs = [s["seconds"] for s in measured]
    med = statistics.median(secs)
    parts: dict[str, float] = {}
    for s in measured:
        for k, v in s["parts"].items():
            parts[k] = parts.get(k, 0.0) + v / len(measured)
    mean_step = statistics.mean(secs)
    parts["other"] = max(0.0, mean_step - sum(parts.values()))
    comp = statistics.mean(s["completions"] for s in measured)
    toks = statistics.mean(s["completion_tokens"] + s["prompt_tokens"] for s in measured)
    return {
        "variant": name,
        "seconds_per_step": med,
        "seconds_min": min(secs),
        "seconds_max": max(secs),
        # CPU seconds of the process: with T threads and no contention about T x wall; far less
        # sensitive than wall time to other jobs on a shared machine
        "cpu_seconds_per_step": statistics.median(s["cpu_seconds"] for s in measured),
        "completions_per_second": comp / med,
        "tokens_per_second": toks / med,
        "completion_tokens_per_step": statistics.mean(s["completion_tokens"] for s in measured),
        "shares": {k: v / mean_step for k, v in parts.items()},
        "peak_rss_gb": result["peak_rss_gb"],
        "rss_before_gb": result["rss_before_gb"],
        "shared_prefix": result.get("shared_prefix"),  # None for TRL's variants
    }


def print_report(settings: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads {settings['threads']}"
    )
    head = (
        f"{'variant':<22}{'s/step':>8}{'(min-max)':>14}{'cpu s':>7}{'compl/s':>9}{'tok/s':>8}"
        f"{'gen':>6}{'logp':>6}{'bwd':>6}{'other':>6}{'peak RSS':>10}"
    )
    print(head)
    for r in rows:
        sh = r["shares"]
        spread = "({:.2f}-{:.2f})".format(r["seconds_min"], r["seconds_max"])
        print(
            f"{r['variant']:<22}{r['seconds_per_step']:>8.2f}{spread:>14}{r['cpu_seconds_per_step']:>7.2f}"
            f"{r['completions_per_second']:>9.2f}{r['tokens_per_second']:>8.0f}"
            f"{sh.get('generation', 0):>6.0%}{sh.get('logprob_passes', 0):>6.0%}"
            f"{sh.get('backward', 0):>6.0%}{sh.get('other', 0):>6.0%}{r['peak_rss_gb']:>8.2f} GB"
        )
    by = {r["variant"]: r for r in rows}
    if "ours" in by:
        for other in ("trl", "trl-completion-only", "ours-unshared"):
            if other in by:
                speed = by[other]["seconds_per_step"] / by["ours"]["seconds_per_step"]
                mem = by["ours"]["peak_rss_gb"] / by[other]["peak_rss_gb"]
                cpu = by[other]["cpu_seconds_per_step"] / by["ours"]["cpu_seconds_per_step"]
                print(
                    f"ours vs {other}: {speed:.2f}x faster per step (wall; {cpu:.2f}x in CPU seconds), "
                    f"peak RSS ours/{other} = {mem:.2f}"
                )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (lazy init, allocator)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--prompts", type=int, default=2, help="prompts per optimiser step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--completion-length", type=int, default=64, help="forced completion length (tokens)")
    p.add_argument("--images", type=int, default=4, help="images per prompt")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tied", action="store_true", help="tie head and embedding (default: untied, 19.6M tiny)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS + ABLATIONS}"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 warm-up + 1 step, 8-token completions")
    p.add_argument("--json", type=Path, help="also write the summaries here")
    p.add_argument("--worker", choices=VARIANTS + ABLATIONS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.completion_length = 1, 1, 8
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        if args.worker in ("ours", "ours-unshared"):
            result = run_ours(args, shared=args.worker == "ours")
        else:
            result = run_trl(args, completion_only=args.worker == "trl-completion-only")
        print("RESULT " + json.dumps(result))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS + ABLATIONS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS + ABLATIONS}")
    settings = _settings(args)
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    extra = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    extra += ["--completion-length", str(args.completion_length)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for v in variants:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, *base, *extra, "--worker", v],
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"variant {v} failed (exit {proc.returncode})")
        rows.append(summarise(v, json.loads(lines[-1][len("RESULT ") :]), args.warmup))
        print(f"[{v}: {time.perf_counter() - t0:.0f} s wall]", file=sys.stderr)
    print_report(settings, rows)
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
