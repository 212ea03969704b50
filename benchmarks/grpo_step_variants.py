"""The variants :mod:`grpo_step` times, each one GRPO optimiser step on the same model, data and
settings: ``ours`` (and the ``ours-unshared`` ablation) through :class:`univg.modules.GRPOModule`,
``trl`` and ``trl-completion-only`` through TRL's ``GRPOTrainer`` with univg's processor behind
:func:`trl_processor`. Each runner returns per-step seconds, their split into generation / log-prob
passes / backward, token counts and peak RSS; ``benchmarks/grpo_step.py`` runs each in its own
process and reports them.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from typing import Any

TASK = "common_object"  # a task whose image count is settable


# ------------------------------------------------------------------------------------------ setup
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
    """Accumulates seconds per category; ``wrap`` wraps a function so its calls are timed."""

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

    import univg.modules.grpo.module as grpo_mod
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
def trl_processor(processor: Any) -> Any:
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
        processing_class=trl_processor(processor),
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
