"""Decode speed of every InternLM family's shapes: the HBM roofline and every generation mode, one run.

Saves random weights in the real shapes in the family's original on-disk format (v1: sharded
pytorch_model-*.bin, float16, per-layer rotary inv_freq buffers; InternLM2/2.5: safetensors with fused
wqkv, bfloat16; InternLM3: Llama-named safetensors, bfloat16), loads them through ``load_chat_model``,
measures HBM read bandwidth in the same process, then times each mode and prints a table
(mode, tok/s, ratio to the roofline, time to first token for a 1,024-token prompt, peak memory);
the same figures go to a JSON file.

    python bench/decode.py --model 7b --out bench-7b.json
    python bench/decode.py --model internlm2-7b --dtype bfloat16 --modes engine,chat,streams,server --tokens 256
    python bench/decode.py --model tiny2 --device cpu --modes engine,chat,streams --streams 2 --stream-tokens 8
    python bench/step.py --sweep --rates        # the kernels alone: block-shape sweeps, step rates per bucket
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from internlm_demo import GenerationParams, GenerationStats, load_chat_model
from internlm_demo.generation.engine import FastEngine
from internlm_demo.generation.simple import generate_ids
from internlm_demo.models.loading import load_model
from internlm_demo.serving.chat_model import ChatModel

GIB = 1024**3
# Each family's shapes and on-disk format, from the original repositories' config.json (README says how
# each was checked). "format": v1 = sharded pytorch_model-*.bin (float16, per-layer rotary inv_freq
# buffers where the original has them); v2 = InternLM2's safetensors with fused wqkv (bfloat16);
# v3 = InternLM3's Llama-named safetensors (bfloat16).
SHAPES = {
    "7b": {"format": "v1", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "intermediate": 11008,
           "vocab": 103168, "bias": True, "max_position": 2048, "rotary_buffers": True},
    "20b": {"format": "v1", "hidden": 5120, "layers": 60, "heads": 40, "kv_heads": 40, "intermediate": 13824,
            "vocab": 103168, "bias": False, "max_position": 4096, "rotary_buffers": False},
    "internlm2-7b": {"format": "v2", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 14336,
                     "vocab": 92544, "bias": False, "max_position": 32768, "rope_theta": 1000000,
                     "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "internlm2-20b": {"format": "v2", "hidden": 6144, "layers": 48, "heads": 48, "kv_heads": 8,
                      "intermediate": 16384, "vocab": 92544, "bias": False, "max_position": 32768,
                      "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "internlm3-8b": {"format": "v3", "hidden": 4096, "layers": 48, "heads": 32, "kv_heads": 2, "intermediate": 10240,
                     "vocab": 128512, "bias": False, "max_position": 32768, "rope_theta": 50000000,
                     "rope_scaling": {"rope_type": "dynamic", "factor": 6.0}},
    "tiny": {"format": "v1", "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 4, "intermediate": 128,
             "vocab": 103168, "bias": True, "max_position": 2048, "rotary_buffers": True},
    "tiny2": {"format": "v2", "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
              "vocab": 92544, "bias": False, "max_position": 2048, "rope_theta": 1000000,
              "rope_scaling": {"type": "dynamic", "factor": 2.0}},
}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
FIXTURES = REPO.parent / "shared" / "fixtures"
# The real tokenizers: v1's for v1 shapes; InternLM2's for v2 and v3 (v3's own is not in the fixtures:
# its 128,512-entry head then reaches ids the tokenizer lacks, so v3 runs the engine on ids only).
TOKENIZER_SOURCES = {
    "v1": (FIXTURES / "internlm-chat-7b-tiny", REPO / ".device" / "bench-assets"),
    "v2": (FIXTURES / "internlm2-chat-7b-tiny", REPO / ".device" / "bench-assets-v2"),
}
TOKENIZER_SOURCES["v3"] = TOKENIZER_SOURCES["v2"]
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.02}
ALL_MODES = ("hf", "simple", "engine", "chat", "equality", "agreement", "memory", "streams", "server", "first_reply",
             "profile")
IDS_ONLY_MODES = ("engine", "equality", "agreement", "memory", "profile")  # what runs without a matching tokenizer


def tokenizer_folder(shape: dict) -> Path | None:
    return next((p for p in TOKENIZER_SOURCES[shape["format"]] if (p / "tokenizer.model").is_file()), None)


# ---- the checkpoint -------------------------------------------------------------------------------


def original_tensors(shape: dict):
    """(name, shape, kind) of every tensor of the family's original checkpoint, in file order."""
    h, i, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    d, heads, kv_heads = h // shape["heads"], shape["heads"], shape["kv_heads"]
    fmt = shape["format"]
    yield ("model.tok_embeddings.weight" if fmt == "v2" else "model.embed_tokens.weight"), (v, h), "matrix"
    for layer in range(shape["layers"]):
        if fmt == "v2":
            prefix = f"model.layers.{layer}."
            yield f"{prefix}attention.wqkv.weight", ((heads + 2 * kv_heads) * d, h), "matrix"
            yield f"{prefix}attention.wo.weight", (h, heads * d), "matrix"
            yield f"{prefix}feed_forward.w1.weight", (i, h), "matrix"
            yield f"{prefix}feed_forward.w3.weight", (i, h), "matrix"
            yield f"{prefix}feed_forward.w2.weight", (h, i), "matrix"
            yield f"{prefix}attention_norm.weight", (h,), "norm"
            yield f"{prefix}ffn_norm.weight", (h,), "norm"
            continue
        prefix = f"model.layers.{layer}."
        for proj, rows in (("q_proj", heads * d), ("k_proj", kv_heads * d), ("v_proj", kv_heads * d), ("o_proj", h)):
            yield f"{prefix}self_attn.{proj}.weight", (rows, heads * d if proj == "o_proj" else h), "matrix"
            if shape["bias"]:
                yield f"{prefix}self_attn.{proj}.bias", (rows,), "bias"
        if shape.get("rotary_buffers"):
            yield f"{prefix}self_attn.rotary_emb.inv_freq", (d // 2,), "inv_freq"
        yield f"{prefix}mlp.gate_proj.weight", (i, h), "matrix"
        yield f"{prefix}mlp.down_proj.weight", (h, i), "matrix"
        yield f"{prefix}mlp.up_proj.weight", (i, h), "matrix"
        yield f"{prefix}input_layernorm.weight", (h,), "norm"
        yield f"{prefix}post_attention_layernorm.weight", (h,), "norm"
    yield "model.norm.weight", (h,), "norm"
    yield ("output.weight" if fmt == "v2" else "lm_head.weight"), (v, h), "matrix"


def random_tensor(size, kind: str, head_dim: int, dtype, device) -> torch.Tensor:
    if kind == "inv_freq":
        return (1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)).to(dtype)
    values = torch.randn(size, device=device, dtype=dtype)
    if kind == "norm":
        return (1 + 0.1 * values).cpu()
    return (0.02 * values).cpu()


def original_config(shape: dict) -> dict:
    """The family's config.json, with the keys its original repository has."""
    common = {"bias": shape["bias"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
              "hidden_size": shape["hidden"], "initializer_range": 0.02, "intermediate_size": shape["intermediate"],
              "max_position_embeddings": shape["max_position"], "num_attention_heads": shape["heads"],
              "num_hidden_layers": shape["layers"], "tie_word_embeddings": False, "use_cache": True,
              "vocab_size": shape["vocab"]}
    if shape["format"] == "v1":
        return {"architectures": ["InternLMForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_internlm.InternLMConfig",
                             "AutoModel": "modeling_internlm.InternLMForCausalLM",
                             "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
                **common, "model_type": "internlm", "pad_token_id": 0, "rms_norm_eps": 1e-06,
                "torch_dtype": "float16", "transformers_version": "4.33.2"}
    if shape["format"] == "v2":
        return {"architectures": ["InternLM2ForCausalLM"], "attn_implementation": "eager",
                "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                             "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                             "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
                **common, "model_type": "internlm2", "num_key_value_heads": shape["kv_heads"], "pad_token_id": 2,
                "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": shape["rope_scaling"],
                "rope_theta": shape["rope_theta"], "torch_dtype": "bfloat16", "transformers_version": "4.41.0"}
    return {"architectures": ["InternLM3ForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_internlm3.InternLM3Config",
                         "AutoModel": "modeling_internlm3.InternLM3Model",
                         "AutoModelForCausalLM": "modeling_internlm3.InternLM3ForCausalLM"},
            **common, "head_dim": shape["hidden"] // shape["heads"], "model_type": "internlm3",
            "num_key_value_heads": shape["kv_heads"], "pad_token_id": 2, "qkv_bias": False, "rms_norm_eps": 1e-05,
            "rope_scaling": shape["rope_scaling"], "rope_theta": shape["rope_theta"], "torch_dtype": "bfloat16",
            "transformers_version": "4.47.1"}


def save_checkpoint(folder: Path, shape: dict, device, shard_bytes: int, tokenizer_from: Path) -> float:
    """Write config, tokenizer and random shards as the family's original repository lays them out; seconds."""
    from safetensors.torch import save_file

    began = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    head_dim = shape["hidden"] // shape["heads"]
    (folder / "config.json").write_text(json.dumps(original_config(shape), indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, folder / name)
    torch.manual_seed(0)
    safetensors = shape["format"] != "v1"
    dtype = torch.bfloat16 if safetensors else torch.float16
    specs = list(original_tensors(shape))
    groups, current, size = [], [], 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * 2
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes
    groups.append(current)
    weight_map, total = {}, 0
    for number, group in enumerate(groups, start=1):
        shard = (f"model-{number:05d}-of-{len(groups):05d}.safetensors" if safetensors
                 else f"pytorch_model-{number:05d}-of-{len(groups):05d}.bin")
        state = {name: random_tensor(size, kind, head_dim, dtype, device) for name, size, kind in group}
        if safetensors:
            save_file(state, folder / shard, metadata={"format": "pt"})
        else:
            torch.save(state, folder / shard)
        total += sum(t.numel() * t.element_size() for t in state.values())
        weight_map.update({name: shard for name in state})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_name = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps(index, indent=2))
    return time.perf_counter() - began


# ---- measuring ------------------------------------------------------------------------------------


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 10) -> float:
    """Median seconds of ``fn()`` after a warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def read_bandwidth(device) -> dict:
    """HBM read bandwidth (bytes/s): a reduction over 2 GiB and a device copy, both measured here."""
    elements = (2 * GIB if torch.device(device).type == "cuda" else GIB // 4) // 2
    data = torch.empty(elements, dtype=torch.float16, device=device).uniform_(-1, 1)
    nbytes = data.numel() * 2
    result = {"sum_read": nbytes / timed(lambda: data.sum(dtype=torch.float32), device)}
    target = torch.empty_like(data)
    result["copy_read_plus_write"] = 2 * nbytes / timed(lambda: target.copy_(data), device)
    if torch.device(device).type == "cuda":
        result["triton_read"] = nbytes / triton_reader(data)
        result["gemv_read"] = nbytes / gemv_reader(data)
    result["read"] = max(v for k, v in result.items() if k != "copy_read_plus_write")
    return result


def triton_reader(data: torch.Tensor):
    """A read-only Triton reduction over ``data``, as fast as a few launch shapes allow."""
    import triton
    import triton.language as tl

    @triton.jit
    def read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        base = tl.program_id(0) * BLOCK * ITERS
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for step in tl.static_range(ITERS):
            offsets = base + step * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
        tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))

    def reader(block, iters, warps):
        programs = triton.cdiv(data.numel(), block * iters)
        partial = torch.empty(programs, dtype=torch.float32, device=data.device)
        return lambda: read_kernel[(programs,)](data, partial, data.numel(), BLOCK=block, ITERS=iters, num_warps=warps)

    shapes = [(4096, 8, 8), (2048, 8, 4), (8192, 4, 8), (1024, 16, 4)]
    times = {shape: timed(reader(*shape), data.device) for shape in shapes}
    best = min(times, key=times.get)
    return times[best]


def gemv_reader(data: torch.Tensor) -> float:
    """Seconds for the engine's own GEMV kernel to stream ``data`` as a [rows, 4096] weight: also a read."""
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    matrix = data.view(-1, 4096)
    x = torch.randn(1, 4096, dtype=data.dtype, device=data.device)
    out = torch.empty(1, matrix.shape[0], dtype=data.dtype, device=data.device)
    times = []
    for config in [(2, 2048, 4, 1), (4, 1024, 4, 0), (16, 512, 4, 0), (32, 256, 4, 0)]:
        kernels = TritonDecodeKernels({tuple(matrix.shape): config})
        times.append(timed(lambda kernels=kernels: kernels._gemv(x, matrix, None, out), data.device))
    return min(times)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if torch.device(device).type == "cuda" else None


def query_of_length(chat: ChatModel, tokens: int) -> str:
    """A query whose prompt (format and BOS included) is ``tokens`` long, or just over."""
    low, high = 1, tokens
    while low < high:
        middle = (low + high) // 2
        if chat.count_tokens(" ".join(["token"] * middle)) >= tokens:
            high = middle
        else:
            low = middle + 1
    return " ".join(["token"] * low)


def drain(iterator) -> None:
    for _ in iterator:
        pass


# ---- the modes ------------------------------------------------------------------------------------


def mode_hf(model, short_ids, long_ids, tokens: int, device) -> dict:
    """transformers' eager ``generate`` (DynamicCache), greedy."""
    with torch.inference_mode():
        def run(ids, new):
            inputs = torch.tensor([ids], device=device)
            began = time.perf_counter()
            model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
            sync(device)
            return time.perf_counter() - began
        run(short_ids, 2)
        reset_peak(device)
        one, many = run(short_ids, 1), run(short_ids, tokens)
        ttft = run(long_ids, 1)
    return {"mode": "hf_generate_eager", "tokens": tokens, "tok_s": (tokens - 1) / (many - one),
            "ttft_1024_ms": 1000 * ttft, "peak_gib": peak_gib(device)}


def mode_simple(model, short_ids, long_ids, tokens: int, device) -> dict:
    """The simple path: generation.generate_ids (HF forward with DynamicCache, host-side sampling)."""
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    drain(generate_ids(model, short_ids, GenerationParams(do_sample=False, max_new_tokens=2), set()))
    reset_peak(device)
    stats = GenerationStats()
    drain(generate_ids(model, short_ids, params, set(), stats))
    first = GenerationStats()
    drain(generate_ids(model, long_ids, GenerationParams(do_sample=False, max_new_tokens=1), set(), first))
    return {"mode": "simple_path", "tokens": stats.new_tokens, "tok_s": stats.tokens_per_s,
            "ttft_1024_ms": 1000 * first.time_to_first_token_s, "peak_gib": peak_gib(device)}


def mode_engine(engine: FastEngine, short_ids, long_ids, tokens: int, device) -> list[dict]:
    """The engine's raw greedy stream, the same with sampling (ids only), and greedy after a 1k prompt."""
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    drain(engine.generate(short_ids, GenerationParams(do_sample=False, max_new_tokens=8), set()))
    reset_peak(device)
    stats = GenerationStats()
    drain(engine.generate(short_ids, params, set(), stats))
    ttfts = []
    for _ in range(3):
        first = GenerationStats()
        drain(engine.generate(long_ids, GenerationParams(do_sample=False, max_new_tokens=1), set(), first))
        ttfts.append(first.time_to_first_token_s)
    rows = [{"mode": "engine_greedy", "tokens": stats.new_tokens, "tok_s": stats.tokens_per_s,
             "ttft_1024_ms": 1000 * statistics.median(ttfts), "peak_gib": peak_gib(device)}]
    sampled = GenerationStats()
    drain(engine.generate(short_ids, GenerationParams(max_new_tokens=tokens, seed=1, **SAMPLING), set(), sampled))
    rows.append({"mode": "engine_sampling_ids", "tokens": sampled.new_tokens, "tok_s": sampled.tokens_per_s,
                 "ttft_1024_ms": None, "peak_gib": None, "sampling": SAMPLING})
    long_stats = GenerationStats()
    drain(engine.generate(long_ids, GenerationParams(do_sample=False, max_new_tokens=tokens), set(), long_stats))
    rows.append({"mode": "engine_greedy_after_1024_prompt", "tokens": long_stats.new_tokens,
                 "tok_s": long_stats.tokens_per_s, "ttft_1024_ms": 1000 * long_stats.time_to_first_token_s,
                 "peak_gib": None})
    return rows


def mode_chat(chat: ChatModel, short_query: str, long_query: str, tokens: int, device) -> dict:
    """ChatModel.stream_chat on the engine with sampling and the family's stop words."""
    drain(chat.stream_chat(short_query, [], max_new_tokens=8, **SAMPLING))
    reset_peak(device)
    stats = GenerationStats()
    drain(chat.stream_chat(short_query, [], stats=stats, max_new_tokens=tokens, seed=1, **SAMPLING))
    ttfts = []
    for _ in range(3):
        first = GenerationStats()
        drain(chat.stream_chat(long_query, [], stats=first, max_new_tokens=1, **SAMPLING))
        ttfts.append(first.time_to_first_token_s)
    return {"mode": "chat_stream_sampling", "tokens": stats.new_tokens, "tok_s": stats.tokens_per_s,
            "ttft_1024_ms": 1000 * statistics.median(ttfts), "peak_gib": peak_gib(device),
            "finish_reason": stats.finish_reason, "stop_ids": sorted(chat.stop_ids), "sampling": SAMPLING}


def greedy_equality(chat: ChatModel, engine: FastEngine, prompt_ids, tokens: int) -> dict:
    """Does the engine's greedy output equal the simple path's, token for token?"""
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    plain = list(generate_ids(chat.model, prompt_ids, params, set()))
    fast = list(engine.generate(prompt_ids, params, set()))
    first_difference = next((i for i, (a, b) in enumerate(zip(plain, fast)) if a != b), None)
    result = {"tokens": tokens, "equal": plain == fast, "first_difference": first_difference,
              "plain": plain, "engine": fast}
    if first_difference is not None:
        # How close the plain path's own top two were at the step where the paths part.
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids + plain[:first_difference]], device=engine.device)
            top = chat.model(input_ids=ids).logits[0, -1].float().topk(2)
        result["plain_top2_gap_at_difference"] = float(top.values[0] - top.values[1])
    return result


def greedy_agreement(chat: ChatModel, engine: FastEngine, folder: Path, prompt_ids, tokens: int, device) -> dict:
    """How often greedy picks agree with a float32 forward of the same checkpoint (issue 18): the engine's
    own picks, and transformers' forward in the bench dtype, both teacher-forced over the engine's tokens."""
    picks = list(engine.generate(prompt_ids, GenerationParams(do_sample=False, max_new_tokens=tokens), set()))
    ids = torch.tensor([list(prompt_ids) + picks[:-1]], device=device)  # row i + len(prompt) - 1 predicts picks[i]
    predicting = slice(len(prompt_ids) - 1, None)
    with torch.inference_mode():
        half = chat.model(input_ids=ids, use_cache=False).logits[0, predicting].argmax(-1).cpu()
        reference, placement = float32_reference(folder, device, 2 * weight_bytes(chat.model))
        try:
            exact_logits = reference(input_ids=ids, use_cache=False).logits[0, predicting].float().cpu()
        finally:
            del reference
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    exact = exact_logits.argmax(-1)
    top2 = exact_logits.topk(2).values
    gaps = top2[:, 0] - top2[:, 1]
    fast = torch.tensor(picks)
    engine_differs = fast != exact
    return {"positions": len(picks), "dtype": str(next(chat.model.parameters()).dtype).removeprefix("torch."),
            "engine_vs_float32": float((fast == exact).float().mean()),
            "transformers_vs_float32": float((half == exact).float().mean()),
            "engine_vs_transformers": float((fast == half).float().mean()),
            "float32_top2_gap_median": float(gaps.median()),
            "float32_top2_gap_median_where_engine_differs":
                float(gaps[engine_differs].median()) if engine_differs.any() else None,
            "float32_placement": placement}


def float32_reference(folder: Path, device, float32_bytes: int):
    """The checkpoint in float32: loaded whole on ``device`` when it fits beside what is there already, else
    held on the CPU in its stored dtype and run in float32 one decoder layer at a time on the GPU (the
    conversions are exact, so the weights are the same); (model, where it ran)."""
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
    if not on_gpu or torch.cuda.mem_get_info(torch.device(device))[0] > float32_bytes + 4 * GIB:
        try:
            return load_model(folder, device=device, dtype="float32", progress=False).model, device
        except torch.OutOfMemoryError:
            if not on_gpu:
                raise
        gc.collect()
        torch.cuda.empty_cache()
    stored = json.loads((folder / "config.json").read_text())["torch_dtype"]
    model = load_model(folder, device="cpu", dtype=stored, progress=False).model
    stream_decoder_layers(model, device)
    return model, f"cpu ({stored}), one decoder layer at a time in float32 on the GPU"


def stream_decoder_layers(model, device) -> None:
    """Run a model held on the CPU in float32 on ``device``: all but its decoder layers move there now, each
    decoder layer only for its own forward, after which it goes back in the dtype it had."""
    stored = model.lm_head.weight.dtype
    for name, child in model.model.named_children():
        if name != "layers":
            child.to(device, torch.float32)
    model.lm_head.to(device, torch.float32)

    def to_device(layer, args) -> None:
        layer.to(device, torch.float32)

    def back_to_cpu(layer, args, output) -> None:
        layer.to("cpu", stored)

    for layer in model.model.layers:
        layer.register_forward_pre_hook(to_device)
        layer.register_forward_hook(back_to_cpu)


def memory_at_2k(engine: FastEngine, long_ids, device) -> dict:
    """Peak memory of a 2,048-token conversation (1,024-token prompt + 1,024 new tokens)."""
    reset_peak(device)
    stats = GenerationStats()
    drain(engine.generate(long_ids, GenerationParams(do_sample=False, max_new_tokens=2048 - len(long_ids)), set(),
                          stats))
    return {"context_tokens": len(long_ids) + stats.new_tokens, "tok_s": stats.tokens_per_s,
            "peak_allocated_gib": peak_gib(device),
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if torch.device(device).type == "cuda" else None}


def concurrent_streams(chat: ChatModel, streams: int, tokens: int) -> dict:
    """``streams`` users chatting at once through one ChatModel, arriving 20 ms apart: the aggregate rate,
    each stream's decode rate and each newcomer's time to first text while the others decode. One short
    reply first, so that a process's first requests (``first_reply`` measures those) are not counted here."""
    for _ in chat.stream_chat("warm-up", [], max_new_tokens=4, **SAMPLING):
        pass
    barrier = threading.Barrier(streams)
    records = [None] * streams

    def worker(index: int) -> None:
        stats = GenerationStats()
        barrier.wait()
        time.sleep(0.02 * index)  # users arrive a little apart, so the arrival order is known
        arrived = time.perf_counter()
        chunks = chat.stream_chat(f"stream {index}: tell me a story", [], stats=stats, max_new_tokens=tokens,
                                  seed=index, **SAMPLING)
        first = None
        for _ in chunks:
            first = first or time.perf_counter()
        done = time.perf_counter()
        records[index] = {"stream": index, "arrived": arrived, "first_text": first, "done": done,
                          "ttft_ms": 1000 * (first - arrived) if first else None, "tokens": stats.new_tokens,
                          "decode_tok_s": stats.tokens_per_s}

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    began = min(r["arrived"] for r in records)
    ended = max(r["done"] for r in records)
    for record in records:
        for key in ("arrived", "first_text", "done"):
            record[key] = round(record[key] - began, 4) if record[key] is not None else None
    ttfts = [r["ttft_ms"] for r in records if r["ttft_ms"] is not None]
    return {"streams": streams, "tokens_each": tokens, "aggregate_tok_s": sum(r["tokens"] for r in records) / (ended - began),
            "min_stream_tok_s": min(r["decode_tok_s"] for r in records),
            "median_stream_tok_s": statistics.median(r["decode_tok_s"] for r in records),
            "max_ttft_ms": max(ttfts), "median_ttft_ms": statistics.median(ttfts), "wall_s": ended - began,
            "per_stream": records}


def server_streams(chat: ChatModel, requests: int, tokens: int) -> dict:
    """``requests`` concurrent chat completions through the OpenAI-compatible server on 127.0.0.1."""
    import httpx
    import uvicorn

    from internlm_demo.serving.openai_server import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(chat), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    while not server.started:
        time.sleep(0.05)
    body = {"max_tokens": tokens, "temperature": SAMPLING["temperature"], "top_p": SAMPLING["top_p"],
            "top_k": SAMPLING["top_k"], "repetition_penalty": SAMPLING["repetition_penalty"]}
    records = [None] * requests

    def client(index: int) -> None:
        began = time.perf_counter()
        reply = httpx.post(url, json={**body, "seed": index, "messages": [
            {"role": "user", "content": f"request {index}: tell me a story"}]}, timeout=600).json()
        records[index] = {"seconds": time.perf_counter() - began, "tokens": reply["usage"]["completion_tokens"]}

    try:
        httpx.post(url, json={**body, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}, timeout=600)
        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(requests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {"requests": requests, "max_tokens": tokens, "aggregate_tok_s": sum(r["tokens"] for r in records) / wall,
            "wall_s": wall, "per_request": records}


def first_reply(folder: Path, triton_cache: Path) -> dict:
    """Seconds from starting a fresh Python process to the first streamed text (engine auto)."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(triton_cache), PYTHONUNBUFFERED="1")
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--first-reply-child", str(folder)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds, detail = None, {}
    for line in child.stdout:
        if line.startswith("FIRST_REPLY "):
            seconds = time.perf_counter() - began
            detail = json.loads(line.removeprefix("FIRST_REPLY "))
            break
    child.stdout.close()
    _, errors = child.communicate(timeout=120)
    if seconds is None:
        detail["error"] = errors[-2000:]
    return {"seconds": seconds, **detail}


def first_reply_child(folder: str) -> None:
    began = time.perf_counter()
    chat = load_chat_model(folder, engine="auto", progress=False)
    loaded = time.perf_counter()
    next(iter(chat.stream_chat("你好", [], max_new_tokens=32, **SAMPLING)))
    print("FIRST_REPLY " + json.dumps({"engine": type(chat.engine).__name__, "load_and_build_s": loaded - began,
                                       "after_imports_s": time.perf_counter() - began}), flush=True)


# ---- profile -------------------------------------------------------------------------------------


def kernel_times(prof, steps: int) -> dict[str, tuple[float, float]]:
    """Per kernel a torch profile saw, the costliest first: (GPU microseconds, launches) per step."""
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    rows = sorted((e for e in events if getattr(e, key) > 0), key=lambda e: getattr(e, key), reverse=True)
    return {e.key[:100]: (round(getattr(e, key) / steps, 1), e.count / steps) for e in rows}


def profile_decode(engine: FastEngine, prompt_ids, steps: int = 32) -> str:
    """GPU time per kernel while the engine decodes ``steps`` greedy tokens of one request."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        drain(engine.generate(prompt_ids, GenerationParams(do_sample=False, max_new_tokens=steps), set()))
        torch.cuda.synchronize()
    times = kernel_times(prof, steps)
    total = sum(micros for micros, _ in times.values())
    lines = [f"{steps} greedy tokens (prefill included): {total / 1000:.3f} ms of kernel time per token"]
    for name, (micros, launches) in list(times.items())[:14]:
        lines.append(f"{micros:9.1f} us/token {launches:6.1f}x  {name[:90]}")
    return "\n".join(lines)


# ---- the run --------------------------------------------------------------------------------------


def print_table(result: dict) -> None:
    ceiling = result["roofline"]["ceiling_tok_s"]
    print(f"\n{result['model']} on {result['gpu']} ({result['date']}): HBM read "
          f"{result['roofline']['read_bandwidth_Bps'] / 1e12:.2f} TB/s, weights "
          f"{result['roofline']['weight_bytes'] / GIB:.2f} GiB -> roofline {ceiling:.1f} tok/s")
    print(f"{'mode':34} {'tok/s':>8} {'ratio':>6} {'TTFT@1024 ms':>13} {'peak GiB':>9}")
    for row in result["modes"]:
        ttft = f"{row['ttft_1024_ms']:.1f}" if row.get("ttft_1024_ms") is not None else "-"
        peak = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "-"
        print(f"{row['mode']:34} {row['tok_s']:8.1f} {row['tok_s'] / ceiling:6.3f} {ttft:>13} {peak:>9}")
    for key in ("equality", "equality_torch_kernels", "agreement", "memory_2k", "first_reply_cold", "first_reply_warm"):
        if key in result:
            shown = {k: v for k, v in result[key].items() if k not in ("plain", "engine", "per_stream")}
            print(f"{key}: {json.dumps(shown)}")
    for key in sorted(k for k in result if k.startswith(("streams_", "server_"))):
        shown = {k: v for k, v in result[key].items() if k not in ("per_stream", "per_request")}
        print(f"{key}: {json.dumps(shown)}")
    if "profile" in result:
        print(result["profile"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "internlm-bench")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated subset of {ALL_MODES}")
    parser.add_argument("--tokens", type=int, default=512, help="new tokens per engine decode measurement")
    parser.add_argument("--simple-tokens", type=int, default=64)
    parser.add_argument("--agreement-tokens", type=int, default=256,
                        help="greedy engine tokens compared with a float32 forward (agreement mode)")
    parser.add_argument("--hf-tokens", type=int, default=32)
    parser.add_argument("--shard-gib", type=float, default=2.0)
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16", help="dtype the model loads in")
    parser.add_argument("--streams", default="8,16", help="concurrent stream_chat sessions, per streams run")
    parser.add_argument("--stream-tokens", type=int, default=256)
    parser.add_argument("--keep-checkpoint", action="store_true", help="leave the random checkpoint in --workdir")
    parser.add_argument("--kernel-sweep", type=Path, default=None,
                        help="a bench/step.py sweep JSON whose choices replace the kernels' built-in block shapes")
    parser.add_argument("--first-reply-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_reply_child:
        first_reply_child(args.first_reply_child)
        return
    device = args.device
    result = {"date": date.today().isoformat(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}
    import transformers
    if args.kernel_sweep:
        from step import apply_sweep
        result["kernel_sweep"] = apply_sweep(json.loads(args.kernel_sweep.read_text())["sweep"])
    modes = set(args.modes.split(","))
    shape = SHAPES[args.model]
    if shape["format"] == "v3":  # InternLM2's tokenizer lacks the ids of v3's larger head
        modes &= set(IDS_ONLY_MODES)
    tokenizer_from = tokenizer_folder(shape)
    if tokenizer_from is None:
        sys.exit(f"no tokenizer.model in {' or '.join(map(str, TOKENIZER_SOURCES[shape['format']]))}")
    folder = args.workdir / f"{args.model}-random"
    result.update(model=args.model, dtype=args.dtype, shape=shape, transformers=transformers.__version__,
                  folder=str(folder), modes_run=sorted(modes))
    result["save_s"] = save_checkpoint(folder, shape, device, int(args.shard_gib * GIB), tokenizer_from)
    result["roofline"] = {"bandwidth": read_bandwidth(device)}
    reset_peak(device)
    began = time.perf_counter()
    chat = load_chat_model(folder, device=device, dtype=args.dtype, engine="fast", progress=False)
    result["load_with_engine_s"] = time.perf_counter() - began
    result["load_peak_gib"] = peak_gib(device)
    engine = chat.engine
    read_bps = result["roofline"]["bandwidth"]["read"]
    total = weight_bytes(chat.model)
    result["roofline"].update(read_bandwidth_Bps=read_bps, weight_bytes=total, ceiling_tok_s=read_bps / total,
                              decode_read_bytes=total - chat.model.model.embed_tokens.weight.numel() * 2)
    result["engine"] = {"kernels": engine.kernels.name, "graphs": len(engine._graphs), "slots": engine.slots,
                        "capacity": engine.capacity}
    print(json.dumps({k: result[k] for k in ("roofline", "engine", "load_with_engine_s")}), flush=True)
    long_query = query_of_length(chat, 1024)
    long_ids = chat.tokenizer.encode(chat.build_prompt(long_query))
    short_query = "Tell me about the history of the Shanghai AI Laboratory."
    short_ids = chat.tokenizer.encode(chat.build_prompt(short_query))
    result["long_prompt_tokens"] = len(long_ids)
    rows = []
    if "hf" in modes:
        rows.append(mode_hf(chat.model, short_ids, long_ids, args.hf_tokens, device))
        print(json.dumps(rows[-1]), flush=True)
    if "simple" in modes:
        rows.append(mode_simple(chat.model, short_ids, long_ids, args.simple_tokens, device))
        print(json.dumps(rows[-1]), flush=True)
    if "engine" in modes:
        rows.extend(mode_engine(engine, short_ids, long_ids, args.tokens, device))
        print(json.dumps(rows[-3:]), flush=True)
    if "chat" in modes:
        rows.append(mode_chat(chat, short_query, long_query, args.tokens, device))
        print(json.dumps(rows[-1]), flush=True)
    result["modes"] = rows

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))

    save()

    def record(key: str, measure) -> None:
        """Run one measurement; a failure is recorded in the results instead of ending the run."""
        try:
            result[key] = measure()
        except Exception as exc:  # noqa: BLE001 - the other measurements still count
            result[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"{key}: {json.dumps(result[key])[:600] if key != 'profile' else result[key]}", flush=True)

    if "equality" in modes:
        record("equality", lambda: greedy_equality(chat, engine, short_ids, 64))
        if engine.kernels.name == "triton":  # the same engine on torch ops (cuBLAS), for comparison
            record("equality_torch_kernels", lambda: greedy_equality(
                chat, FastEngine(chat.model, kernels="torch", slots=1, capacity=256), short_ids, 64))
    if "agreement" in modes:
        record("agreement", lambda: greedy_agreement(chat, engine, folder, short_ids, args.agreement_tokens, device))
        save()
    if "profile" in modes and torch.device(device).type == "cuda":
        record("profile", lambda: profile_decode(engine, short_ids))
    if "memory" in modes:
        record("memory_2k", lambda: memory_at_2k(engine, long_ids, device))
    if "streams" in modes:
        for count in (int(n) for n in args.streams.split(",") if n):
            record(f"streams_{count}", lambda count=count: concurrent_streams(chat, count, args.stream_tokens))
            save()
    if "server" in modes:
        record("server_8", lambda: server_streams(chat, 8, args.stream_tokens))
    if "first_reply" in modes:
        cache = Path(tempfile.mkdtemp(prefix="triton-cache-"))
        record("first_reply_cold", lambda: first_reply(folder, cache))
        record("first_reply_warm", lambda: first_reply(folder, cache))
    save()
    print_table(result)
    if not args.keep_checkpoint:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
