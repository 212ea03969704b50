"""vLLM as GRPO's rollout engine (GPU only): ``engine: {class_path: univg.engines.VLLMEngine}``.

:meth:`VLLMEngine.generate` returns the same :class:`~univg.rl.rollout.Rollout` as our own decoder
([prompt0 x G, prompt1 x G, ...], PAD after the end, mask up to and including the first end token),
so rewards, advantages and the log-prob passes do not know which engine sampled.
:meth:`VLLMEngine.sync_weights` pushes the policy into vLLM after each optimiser step. Two modes,
as in TRL 1.16's ``GRPOTrainer``:

- ``colocate``: a ``vllm.LLM`` inside the training process, on its GPU (``gpu_memory_utilization``
  of it). vLLM's engine is kept in this process (``distributed_executor_backend="external_launcher"``)
  so the weights are loaded straight into its model with the model's own ``load_weights``.
- ``server``: a separate ``vllm serve`` process reached through TRL's ``VLLMClient`` (start it with
  ``VLLM_SERVER_DEV_MODE=1`` and ``--weight-transfer-config '{"backend": "nccl"}'``; multi-image
  prompts need ``--enable-scale-out`` from vLLM 0.30); the weights are streamed to it over NCCL.

What vLLM is given, and why it sees the prompts our log-prob passes score:

- colocate: the prompt as text, i.e. the left-padded ``input_ids`` without padding, each run of
  ``<|image_pad|>`` collapsed to one placeholder (vLLM expands it again from the image), decoded.
  Our prompts are the tokenisation of one string, so re-tokenising the text gives the same ids.
  Server: the exact token ids, with the server's image features pointed at their image runs.
- the images, rebuilt from ``pixel_values`` (un-patched, un-normalised, uint8 RGB at the size the
  processor resized them to): a multiple of 28 within the processor's pixel bounds, so vLLM's
  processor keeps that size and the completions are conditioned on the same pixels.

vLLM is started on the first rollout (after Lightning has set up the processes), never when the
engine is constructed or a config printed; tests inject fakes as ``llm``/``client``. The exchange
with vLLM (prompts, images, completions, weights) is :mod:`univg.engines.vllm_io`.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import torch
from PIL import Image
from torch import nn

from univg.engines.base import RolloutEngine
from univg.engines.vllm_io import (
    assemble_rollout,
    completion_tokens,
    place_image_features,
    prompt_images,
    prompt_texts,
    prompt_token_rows,
    pushed_weights,
)
from univg.rl.rollout import EOS_IDS, MODEL_KEYS, SUPPRESS_IDS, Rollout, SamplingSpec, check_left_padded

#: Where vLLM runs: in this process, or as a ``vllm serve`` server (a typed knob).
VLLMMode = Literal["colocate", "server"]
MODES: tuple[str, ...] = get_args(VLLMMode)

#: Logit bias that keeps vision placeholders out of completions (a sampled one would not match any
#: image features in the log-prob passes). -100 is the floor of the OpenAI range the server accepts;
#: it leaves such a token a probability below e^-100 relative to any other.
SUPPRESS_BIAS = -100.0

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
}

_MISSING = (
    "the vLLM rollout engine needs vLLM: `pip install vllm` on a GPU machine (it brings its own "
    "CUDA build of torch). Without vLLM (e.g. on CPU) leave the module's `engine` unset: rollouts "
    "then use univg.engines.SharedPrefill (univg.rl.rollout.generate, engine='shared')."
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(_MISSING) from err
    return vllm


def _vllm_client_class() -> Any:
    _import_vllm()  # TRL's client streams weights with vLLM's NCCL transfer engine
    try:
        from trl.generation.vllm_client import VLLMClient  # TRL >= 1.x
    except ImportError:  # pragma: no cover - older TRL
        from trl.extras.vllm_client import VLLMClient
    return VLLMClient


def _sampling_params(kw: dict[str, Any]) -> Any:
    """vLLM's ``SamplingParams``; the keyword arguments as a dict for an injected fake without vLLM."""
    try:
        from vllm import SamplingParams
    except ImportError:
        return dict(kw)
    return SamplingParams(**kw)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _launcher_env() -> None:
    """vLLM's ``external_launcher`` joins torch.distributed from the env:// variables (as TRL sets
    them); a process outside any launcher gets rank 0 of 1 and a free local port."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


class VLLMEngine(RolloutEngine):
    """Rollouts sampled by vLLM (colocated or as a server) and the policy's weights pushed into it.

    Args:
        model_name_or_path: the checkpoint vLLM loads (architecture, tokenizer, image processor;
            its weights are replaced at the first :meth:`sync_weights`); default the module's
            ``backbone.checkpoint``.
        mode: "colocate" (a ``vllm.LLM`` in this process) or "server" (``vllm serve`` elsewhere).
        gpu_memory_utilization: share of the GPU vLLM may take (colocate); the rest is training's.
        max_model_len: prompt + completion tokens vLLM reserves a sequence for; None = the model's.
        server_host, server_port: where the vLLM server listens (server).
        dtype: vLLM's weight dtype; pushed weights are cast to it.
        llm, client: an existing ``vllm.LLM`` / TRL ``VLLMClient`` (or a test's fake) instead of one
            started here.
        max_images_per_prompt: vLLM's ``limit_mm_per_prompt`` for images (colocate).
        seed: vLLM's sampling seed (colocate); each process adds its rank.
        skip_frozen: after the first (full) sync, push only tensors an optimiser step can change
            (trainable parameters and the LoRA layers' merged weights): frozen ones never change.
        legacy_names: push the original checkpoints' names (see :func:`~univg.engines.vllm_io.vllm_weight_name`).
        server_timeout: seconds to wait for the server to come up.
        group_port: port of the NCCL weight-transfer group (server).
        llm_kwargs: extra ``vllm.LLM`` arguments (e.g. ``max_num_batched_tokens``, ``enforce_eager``).

    ``record_logprobs`` is not supported: vLLM's log-probs are of its own arithmetic, so
    :attr:`Rollout.sampler_logp` stays None and ``check_invariants`` skips the sampler check.
    """

    holds_weights: ClassVar[bool] = True

    def __init__(
        self,
        model_name_or_path: str | None = None,
        mode: VLLMMode = "colocate",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        server_host: str = "127.0.0.1",
        server_port: int = 8000,
        dtype: str = "bfloat16",
        llm: Any | None = None,
        client: Any | None = None,
        *,
        max_images_per_prompt: int = 8,
        seed: int = 0,
        skip_frozen: bool = True,
        legacy_names: bool = False,
        server_timeout: float = 240.0,
        group_port: int = 51216,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"vllm engine: unknown mode {mode!r}; choose one of {MODES}")
        if (llm if mode == "colocate" else client) is None and importlib.util.find_spec("vllm") is None:
            raise ImportError(_MISSING)  # now, not after the model is built and the first batch drawn
        self.model_name_or_path = model_name_or_path
        self.mode = mode
        self.dtype = dtype
        self.skip_frozen = skip_frozen
        self.legacy_names = legacy_names
        self.llm = llm
        self.client = client
        self.num_syncs = 0
        self._llm = dict(
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            seed=seed,
        )
        self._llm_kwargs = dict(llm_kwargs or {})
        self._server = dict(
            host=server_host, server_port=server_port, group_port=group_port, timeout=server_timeout
        )

    def attach(self, backbone: Any) -> None:
        """vLLM loads the module's ``backbone.checkpoint`` unless ``model_name_or_path`` says otherwise;
        with neither (a random preset), the module cannot be built with this engine."""
        if self.model_name_or_path is None:
            self.model_name_or_path = getattr(backbone, "checkpoint", None)
        if (self.llm if self.mode == "colocate" else self.client) is None:
            self._checkpoint()

    def _start(self) -> None:
        """Start vLLM (or connect to its server) on first use."""
        if self.mode == "colocate" and self.llm is None:
            vllm = _import_vllm()
            _launcher_env()
            kwargs: dict[str, Any] = dict(
                self._llm,
                model=self._checkpoint(),
                seed=self._llm["seed"] + _rank(),  # processes must not draw the same completions
                # keeps the engine in this process, so sync_weights reaches vLLM's model (TRL does the same)
                distributed_executor_backend="external_launcher",
            )
            self.llm = vllm.LLM(**{**kwargs, **self._llm_kwargs})
        elif self.mode == "server" and self.client is None:
            s = self._server
            self.client = _vllm_client_class()(
                host=s["host"],
                server_port=s["server_port"],
                group_port=s["group_port"],
                connection_timeout=s["timeout"],
            )
            if _rank() == 0:  # the main process alone pushes weights
                self.client.init_communicator(device=torch.cuda.current_device())

    def _checkpoint(self) -> str:
        if self.model_name_or_path is None:
            raise ValueError(
                "vllm engine: set engine.init_args.model_name_or_path or backbone.checkpoint (vLLM loads "
                "the architecture, tokenizer and processor from a checkpoint, then takes the policy's weights)"
            )
        return self.model_name_or_path

    # ----------------------------------------------------------------------------- sampling
    def sampling_params(self, sampling: SamplingSpec) -> dict[str, Any]:
        """vLLM ``SamplingParams`` arguments of one request (one prompt).

        Sampling asks for ``n = group_size`` completions of the prompt (vLLM prefills it once); greedy
        decoding (temperature 0) asks for one, which :meth:`generate` repeats G times. top_k 0 (ours:
        off) is vLLM's -1. The end tokens stop a completion; vision placeholders are suppressed.

        >>> e = VLLMEngine("m", llm=object())
        >>> kw = e.sampling_params(SamplingSpec(8, 256, top_k=0))
        >>> kw["n"], kw["top_k"], kw["stop_token_ids"] == list(EOS_IDS), kw["max_tokens"]
        (8, -1, True, 256)
        >>> greedy = e.sampling_params(SamplingSpec(8, 256, do_sample=False))
        >>> greedy["temperature"], greedy["n"]
        (0.0, 1)
        """
        s = sampling
        kw: dict[str, Any] = dict(
            n=s.group_size if s.do_sample else 1,
            max_tokens=s.max_new_tokens,
            stop_token_ids=list(EOS_IDS),
            logit_bias={i: SUPPRESS_BIAS for i in SUPPRESS_IDS},
        )
        if s.do_sample:
            kw.update(
                temperature=float(s.temperature), top_p=float(s.top_p), top_k=s.top_k if s.top_k > 0 else -1
            )
        else:
            kw.update(temperature=0.0, top_p=1.0, top_k=-1)
        return kw

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module | None,
        inputs: Mapping[str, torch.Tensor],
        tokenizer: Any,
        sampling: SamplingSpec,
        *,
        record_logprobs: bool = False,
        images: Sequence[Sequence[Image.Image]] | None = None,
    ) -> Rollout:
        """``group_size`` completions per prompt from vLLM, laid out as :func:`univg.rl.rollout.generate`'s.

        Args:
            model: the policy (unused: vLLM samples its own copy, kept current by :meth:`sync_weights`).
            inputs: left-padded prompts (``input_ids`` [B, P], ``attention_mask``, their images).
            tokenizer: the tokenizer of the prompts (decodes prompt and completion texts).
            sampling: G, max new tokens, temperature, top-p, top-k.
            images: the B prompts' PIL images; default rebuilt from ``pixel_values``
                (:func:`prompt_images`), which keeps vLLM on the pixels the policy is scored on.

        Returns:
            a :class:`~univg.rl.rollout.Rollout` of B*G completions, [prompt0 x G, prompt1 x G, ...],
            ``completion_ids`` [B*G, C] with C <= ``max_new_tokens``.
        """
        inputs = {k: v for k, v in inputs.items() if k in MODEL_KEYS}
        check_left_padded(inputs)
        g = sampling.group_size
        b = int(inputs["input_ids"].shape[0])
        if images is None:
            images = prompt_images(inputs)
        if len(images) != b:
            raise ValueError(f"vllm engine: {len(images)} image lists for {b} prompts")
        self._start()
        kw = self.sampling_params(sampling)
        if self.mode == "colocate":
            groups = self._generate_colocate(prompt_texts(inputs, tokenizer), images, kw)
        else:
            groups = self._generate_server(prompt_token_rows(inputs), images, kw)
        if not sampling.do_sample:  # one greedy completion per prompt stands for its G identical ones
            groups = [c * g for c in groups]
        if [len(c) for c in groups] != [g] * b:
            raise RuntimeError(
                f"vllm engine: expected {g} completions per prompt, got {[len(c) for c in groups]}"
            )
        return assemble_rollout([c for group in groups for c in group], tokenizer, inputs, g)

    def _generate_colocate(
        self, texts: list[str], images: Sequence[Sequence[Image.Image]], kw: dict[str, Any]
    ) -> list[list[list[int]]]:
        requests = []
        for text, imgs in zip(texts, images):
            request: dict[str, Any] = {"prompt": text}
            if imgs:
                request["multi_modal_data"] = {"image": list(imgs)}
            requests.append(request)
        outputs = self.llm.generate(requests, sampling_params=_sampling_params(kw), use_tqdm=False)
        return [[completion_tokens(o) for o in out.outputs] for out in outputs]  # in request order

    def _generate_server(
        self, rows: list[list[int]], images: Sequence[Sequence[Image.Image]], kw: dict[str, Any]
    ) -> list[list[list[int]]]:
        # The server generates from token ids or from images, never both: its processed image
        # features are fetched first and paired with our exact ids (TRL 1.16's protocol).
        features = None
        if any(images):
            raw = self.client.image_features([list(i) if i else None for i in images])
            features = [place_image_features(f, r) for f, r in zip(raw, rows)]
        explicit = {k: kw.pop(k) for k in ("n", "temperature", "top_p", "top_k", "max_tokens")}
        out = self.client.generate(
            prompts=rows, features=features, logprobs=None, generation_kwargs=kw, **explicit
        )
        flat = out["completion_ids"]  # [B * n], prompt-major
        n = explicit["n"]
        return [[list(map(int, c)) for c in flat[i * n : (i + 1) * n]] for i in range(len(rows))]

    # ----------------------------------------------------------------------------- weights
    def _colocated_model(self) -> Any:
        try:  # the path TRL 1.16 loads through (vLLM's engine in this process)
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as err:
            raise RuntimeError(
                "vllm engine: cannot reach the colocated model at "
                "llm.llm_engine.model_executor.driver_worker.model_runner.model; build the LLM with "
                "distributed_executor_backend='external_launcher' (as this engine does) so it runs in-process"
            ) from err

    @torch.no_grad()
    def sync_weights(self, model: nn.Module) -> int:
        """Push the policy's current weights into vLLM and drop its prefix cache (stale keys/values).

        The first call pushes every tensor; later ones, with ``skip_frozen``, only those an optimiser
        step can change. A peft model is pushed merged (base + delta, computed without touching the
        model) under the plain model's names, with no ``lora_*`` tensors. Under FSDP2 every rank
        must call it (gathering a shard is a collective). Returns the number of tensors pushed.
        """
        self._start()
        weights = pushed_weights(model, self.skip_frozen and self.num_syncs > 0, self.legacy_names)
        cast = _DTYPES.get(self.dtype)  # None ("auto"): as the model holds them

        def values():
            for w in weights:
                t = w.tensor()
                yield w.name, (t.to(cast) if cast is not None else t)

        if self.mode == "colocate":
            target = self._colocated_model()
            for name, t in values():  # one tensor at a time: no second copy of the model in memory
                target.load_weights([(name, t)])
            self.llm.reset_prefix_cache()
        elif _rank() == 0:
            if hasattr(self.client, "update_named_params"):  # TRL >= 1.16: one streamed update
                meta = [
                    (w.name, str(cast or w.param.dtype).removeprefix("torch."), list(w.param.shape))
                    for w in weights
                ]
                self.client.update_named_params(meta, values())
            else:
                for name, t in values():
                    self.client.update_named_param(name, t)
            self.client.reset_prefix_cache()
        else:
            for _ in values():  # take part in FSDP's gathers; the main process pushes
                pass
        self.num_syncs += 1
        return len(weights)


__all__ = ["MODES", "SUPPRESS_BIAS", "VLLMEngine", "VLLMMode"]
