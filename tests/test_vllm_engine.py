"""The optional vLLM rollout engine, with fakes in place of vLLM (which needs a GPU and is not installed here).

The fakes check what vLLM would receive (the prompt re-encodes to our exact ids and pixels; the
sampling parameters; weight names and values) and return scripted completions whose rollout is
compared with hand-written values.
"""

from __future__ import annotations

import copy
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.engines import RolloutEngine, VLLMEngine
from univg.engines.vllm_io import pixels_to_images, prompt_token_rows
from univg.model.backbone import BackboneSpec, LoRASpec
from univg.modules import GRPOModule
from univg.rl.rollout import MODEL_KEYS, PAD_ID, SUPPRESS_IDS, Rollout, SamplingSpec, completion_mask

IM_END, END_TEXT = 151645, 151643
G = 3


@pytest.fixture(scope="module")
def prompt_batch(processor):
    # one single-image and one four-image prompt: different lengths, so the first is left padded
    samples = generate_samples(2, tasks=["single", "common_object"], image_size=56, seed=0)
    batch = GroundingCollator(processor, mode="generate")(samples)
    assert batch["attention_mask"][0, 0] == 0 and batch["image_grid_thw"].shape[0] == 5
    return batch


def out(token_ids, finish_reason="stop", stop_reason=None):
    return SimpleNamespace(token_ids=list(token_ids), finish_reason=finish_reason, stop_reason=stop_reason)


class FakeLLM:
    """``vllm.LLM`` stand-in: checks each request against the batch it came from, returns scripted outputs."""

    def __init__(self, processor, batch, scripted):
        self.processor, self.batch, self.scripted = processor, batch, scripted
        self.calls = []
        self.loaded = []
        self.resets = 0
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(weights))
        runner = SimpleNamespace(model_runner=SimpleNamespace(model=model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=runner))

    def generate(self, requests, sampling_params=None, use_tqdm=True):
        self.calls.append((requests, sampling_params))
        rows = prompt_token_rows(self.batch)
        start = 0
        for b, request in enumerate(requests):
            images = request.get("multi_modal_data", {}).get("image", [])
            enc = self.processor(request["prompt"], images)
            # lossless: the text + images vLLM gets are exactly the prompt the policy is scored on
            assert enc["input_ids"][0].tolist() == rows[b]
            n_patches = int(self.batch["image_grid_thw"][start : start + len(images)].prod(1).sum())
            p0 = int(self.batch["image_grid_thw"][:start].prod(1).sum())
            assert torch.equal(enc["pixel_values"], self.batch["pixel_values"][p0 : p0 + n_patches])
            start += len(images)
        assert start == self.batch["image_grid_thw"].shape[0]
        return [SimpleNamespace(outputs=self.scripted[b]) for b in range(len(requests))]

    def reset_prefix_cache(self):
        self.resets += 1


SCRIPTED = [
    [
        out([5, 6, IM_END]),  # ends with <|im_end|>
        out([7, 7, 7, 7], "length"),  # truncated at max_new_tokens
        out([10, 11], "stop", IM_END),  # stopped on a stop id that vLLM did not echo: put back
    ],
    [
        out([12, END_TEXT]),  # <|endoftext|> ends it too
        out([13, 14], "length"),  # cut short by max_model_len: truncated, nothing after it kept
        out([8, IM_END, 9]),  # anything after the first end token is padding
    ],
]


def test_colocate_generate_layout_mask_and_texts(processor, tokenizer, prompt_batch):
    llm = FakeLLM(processor, prompt_batch, SCRIPTED)
    engine = VLLMEngine("Qwen/Qwen2-VL-2B-Instruct", llm=llm)
    roll = engine.generate(None, prompt_batch, tokenizer, SamplingSpec(G, max_new_tokens=4))
    assert isinstance(roll, Rollout) and roll.group_size == G and roll.num_prompts == 2
    P = PAD_ID
    assert roll.completion_ids.tolist() == [
        [5, 6, IM_END, P],
        [7, 7, 7, 7],
        [10, 11, IM_END, P],
        [12, END_TEXT, P, P],
        [13, 14, P, P],
        [8, IM_END, P, P],
    ]
    assert roll.completion_mask.tolist() == [
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
    ]
    assert roll.truncated.tolist() == [False, True, False, False, True, False]
    kept = [[5, 6], [7, 7, 7, 7], [10, 11], [12], [13, 14], [8]]
    assert roll.texts == [tokenizer.decode(k, skip_special_tokens=False) for k in kept]
    assert set(roll.prompt) == {k for k in MODEL_KEYS if k in prompt_batch}
    assert torch.equal(roll.prompt["input_ids"], prompt_batch["input_ids"])
    # the mask is the one our own decoder's rollouts carry for the rows that end normally
    assert torch.equal(roll.completion_mask[[0, 2, 3, 5]], completion_mask(roll.completion_ids[[0, 2, 3, 5]]))
    ((requests, _),) = llm.calls
    assert len(requests) == 2  # one request per prompt, its G completions sampled from one prefill
    assert (
        requests[0]["prompt"].count("<|image_pad|>") == 1
        and requests[1]["prompt"].count("<|image_pad|>") == 4
    )


def test_sampling_params_mapping(processor, tokenizer, prompt_batch):
    llm = FakeLLM(processor, prompt_batch, SCRIPTED)
    engine = VLLMEngine("m", llm=llm)
    engine.generate(None, prompt_batch, tokenizer, SamplingSpec(G, 4, temperature=0.7, top_p=0.9, top_k=0))
    params = llm.calls[-1][1]  # a dict: vLLM's SamplingParams is not installed here
    assert params["n"] == G and params["max_tokens"] == 4
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.7, 0.9, -1)  # top_k 0 = off
    assert params["stop_token_ids"] == [IM_END, END_TEXT]
    assert set(params["logit_bias"]) == set(SUPPRESS_IDS) and max(params["logit_bias"].values()) <= -100
    assert engine.sampling_params(SamplingSpec(G, 4, top_k=5))["top_k"] == 5
    # greedy: one completion (temperature 0) per prompt, repeated G times
    greedy = FakeLLM(processor, prompt_batch, [[out([5, IM_END])], [out([6, 7], "length")]])
    roll = VLLMEngine("m", llm=greedy).generate(
        None, prompt_batch, tokenizer, SamplingSpec(G, 2, do_sample=False)
    )
    params = greedy.calls[-1][1]
    assert (params["n"], params["temperature"], params["top_k"]) == (1, 0.0, -1)
    assert roll.completion_ids.tolist() == [[5, IM_END]] * G + [[6, 7]] * G
    assert roll.truncated.tolist() == [False] * G + [True] * G


def test_images_are_rebuilt_exactly_from_pixel_values(processor):
    rng = np.random.default_rng(0)
    # not square, sides multiples of 28 (as the processor resizes them): h and w must not be swapped
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(56, 140), (84, 56)]
    ]
    enc = processor.process_images(images)
    back = pixels_to_images(enc["pixel_values"], enc["image_grid_thw"])
    assert [im.size for im in back] == [(140, 56), (56, 84)]
    for a, b in zip(images, back):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_server_generate_pairs_token_ids_with_placed_features(tokenizer, prompt_batch):
    rows = prompt_token_rows(prompt_batch)

    class Client:
        def image_features(self, images):
            assert [len(i) for i in images] == [1, 4]
            # the server reports offsets in its own throwaway conversation (0, 100, ...)
            return [
                {"mm_placeholders": {"image": [{"offset": 100 * k, "length": 4} for k in range(len(i))]}}
                for i in images
            ]

        def generate(
            self, prompts, features, n, temperature, top_p, top_k, max_tokens, logprobs, generation_kwargs
        ):
            assert prompts == rows and n == G and top_k == -1 and max_tokens == 3
            assert generation_kwargs["stop_token_ids"] == [IM_END, END_TEXT]
            for ids, f in zip(prompts, features):
                for p in f["mm_placeholders"]["image"]:
                    assert ids[p["offset"] : p["offset"] + p["length"]] == [151655] * 4
                    assert ids[p["offset"] - 1] == 151652  # <|vision_start|> just before
            return {"completion_ids": [[5, IM_END], [6, 7, 8], [9, IM_END]] * 2}

    roll = VLLMEngine("m", mode="server", client=Client()).generate(
        None, prompt_batch, tokenizer, SamplingSpec(G, 3)
    )
    assert roll.completion_ids.tolist() == [[5, IM_END, PAD_ID], [6, 7, 8], [9, IM_END, PAD_ID]] * 2
    assert roll.truncated.tolist() == [False, True, False] * 2


def _tied_names(model):
    """HF state-dict names minus the tied head (vLLM ties it itself and takes the embedding once)."""
    names = set(model.state_dict())
    assert model.config.tie_word_embeddings and "lm_head.weight" in names
    return names - {"lm_head.weight"}


def test_sync_weights_pushes_every_tensor_by_hf_name(processor, prompt_batch):
    torch.manual_seed(0)
    model = BackboneSpec(preset="tiny", freeze_vision=True).build()
    llm = FakeLLM(processor, prompt_batch, SCRIPTED)
    engine = VLLMEngine("m", llm=llm, dtype="float32")
    n = engine.sync_weights(model)
    pushed = dict(llm.loaded)
    assert n == len(llm.loaded) == len(pushed)  # each tensor once
    assert set(pushed) == _tied_names(model)
    state = model.state_dict()
    assert all(torch.equal(pushed[k], state[k]) for k in pushed)
    assert llm.resets == 1
    # later syncs skip what no optimiser step can change (the frozen vision tower)
    llm.loaded.clear()
    n2 = engine.sync_weights(model)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert n2 == len(trainable) and {k for k, _ in llm.loaded} == trainable
    assert not any(k.startswith("model.visual.") for k in trainable) and llm.resets == 2
    # pushed in vLLM's dtype
    llm.loaded.clear()
    VLLMEngine("m", llm=llm, dtype="bfloat16").sync_weights(model)
    assert {t.dtype for _, t in llm.loaded} == {torch.bfloat16}


def test_sync_weights_merges_lora_without_touching_the_model(processor, prompt_batch):
    torch.manual_seed(0)
    model = BackboneSpec(preset="tiny", lora=LoRASpec(r=4)).build()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a non-zero delta
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = copy.deepcopy(model).merge_and_unload()  # peft's own merge, as the reference
    llm = FakeLLM(processor, prompt_batch, SCRIPTED)
    engine = VLLMEngine("m", llm=llm, dtype="float32")
    engine.sync_weights(model)
    pushed = dict(llm.loaded)
    assert not any("lora_" in k or "base_layer" in k for k in pushed)
    assert set(pushed) == _tied_names(merged)
    ref = merged.state_dict()
    assert all(torch.allclose(pushed[k], ref[k], atol=1e-6) for k in pushed)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(
        pushed[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"]
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not merged in place
    # later syncs: only the adapted projections (2 layers x q_proj, v_proj) change
    llm.loaded.clear()
    assert engine.sync_weights(model) == 4
    assert sorted(k.split(".")[-2] for k, _ in llm.loaded) == ["q_proj", "q_proj", "v_proj", "v_proj"]


def test_server_sync_pushes_named_params_and_resets_the_cache(tiny_model):
    class Client:
        def __init__(self):
            self.params, self.resets = {}, 0

        def update_named_param(self, name, tensor):
            self.params[name] = tensor

        def reset_prefix_cache(self):
            self.resets += 1

    client = Client()
    n = VLLMEngine("m", mode="server", client=client, dtype="float32").sync_weights(tiny_model)
    assert n == len(client.params) and set(client.params) == _tied_names(tiny_model)
    assert client.resets == 1


class FakeEngine(RolloutEngine):
    """Stands for VLLMEngine in the module: an engine holding its own weights, scripted completions,
    and a log of calls."""

    holds_weights = True

    def __init__(self):
        self.log, self.synced, self.attached = [], [], None

    def attach(self, backbone):
        self.attached = backbone

    def generate(self, model, inputs, tokenizer, sampling, *, record_logprobs=False):
        assert sampling == SamplingSpec(group_size=2, max_new_tokens=32)
        self.log.append("generate")
        b = inputs["input_ids"].shape[0]
        # rewards differ within each group, so the advantages and the step are not zero
        texts = ["<think>a</think><answer>(1, 2), (30, 40)</answer>", "x"] * b
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [IM_END] for t in texts]
        from univg.engines.vllm_io import assemble_rollout

        return assemble_rollout(rows, tokenizer, inputs, sampling.group_size)

    def sync_weights(self, model):
        self.log.append("sync")
        w = model.model.language_model.layers[0].self_attn.q_proj.weight
        self.synced.append(w.detach().clone())
        return 0


def test_grpo_module_samples_through_the_engine_and_syncs_once_per_step():
    import lightning as L

    from univg.data import SyntheticDataModule

    L.seed_everything(0)
    engine = FakeEngine()
    m = GRPOModule(
        # frozen embedding and vision tower: a cheaper step, and the decoder still moves
        backbone=BackboneSpec(preset="tiny", freeze_embeddings=True, freeze_vision=True),
        lr=1e-2,
        warmup_ratio=0.0,
        group_size=2,
        max_completion_length=32,
        beta=0.0,
        prompts_per_step=2,
        engine=engine,
    )
    assert engine.attached is m.backbone and engine.log == []  # nothing sampled or pushed yet
    dm = SyntheticDataModule(
        num_train=8, num_val=0, tasks=["single"], image_size=56, train_mode="generate", batch_size=1
    )
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(m, datamodule=dm)
    # initial push (the policy is not the checkpoint vLLM loads), then one after each optimiser step
    assert engine.log == ["sync", "generate", "generate", "sync", "generate", "generate", "sync"]
    assert not torch.equal(engine.synced[0], engine.synced[1]) and not torch.equal(
        engine.synced[1], engine.synced[2]
    )
    assert "perf/weight_sync_seconds" in m.last_step_logs


def test_vllm_engine_takes_the_backbone_checkpoint_and_starts_on_first_use(
    processor, tokenizer, prompt_batch
):
    llm = FakeLLM(processor, prompt_batch, SCRIPTED)
    engine = VLLMEngine(llm=llm, gpu_memory_utilization=0.25)
    m = GRPOModule(
        backbone=BackboneSpec(preset="tiny", checkpoint="Qwen/Qwen2-VL-2B-Instruct"), engine=engine
    )
    assert m.engine is engine and engine.model_name_or_path == "Qwen/Qwen2-VL-2B-Instruct"
    mine = VLLMEngine("my/checkpoint", llm=llm)
    GRPOModule(backbone=BackboneSpec(preset="tiny", checkpoint="Qwen/Qwen2-VL-2B-Instruct"), engine=mine)
    assert mine.model_name_or_path == "my/checkpoint"  # an explicit path wins


def test_engine_options_are_checked_before_vllm_is_needed():
    with pytest.raises(TypeError, match="gpu_mem"):
        VLLMEngine(gpu_mem=0.3)  # at construction (the CLI: at parse time), not after the first batch
    with pytest.raises(ValueError, match="mode"):
        VLLMEngine(mode="remote", llm=object())
    engine = VLLMEngine(mode="server", client=object())
    engine.client = None  # as constructed on a machine with vLLM: nothing started yet
    with pytest.raises(ValueError, match="model_name_or_path or backbone.checkpoint"):
        GRPOModule(backbone=BackboneSpec(preset="tiny"), engine=engine)  # a preset: no checkpoint to load


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_missing_vllm_is_a_clear_import_error(mode):
    with pytest.raises(ImportError, match=r"pip install vllm.*GPU.*engine='shared'"):
        VLLMEngine("Qwen/Qwen2-VL-2B-Instruct", mode=mode)
    with pytest.raises(ValueError, match="mode"):
        VLLMEngine("m", mode="remote")
