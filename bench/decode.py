"""Decode speed at batch 1 with InternLM-chat-7B / 20B shapes: the HBM roofline and every generation mode, one run.

Saves random weights in the real shapes in the original on-disk format (sharded pytorch_model-*.bin with
their index, float16, v1's per-layer rotary inv_freq buffers), loads them through ``load_chat_model``,
measures HBM read bandwidth in the same process, then times each mode and prints a table
(mode, tok/s, ratio to the roofline, time to first token for a 1,024-token prompt, peak memory);
the same figures go to a JSON file.

    python bench/decode.py --model 7b --out bench-7b.json
    python bench/decode.py --model 20b --modes simple,engine,chat --out bench-20b.json
    python bench/decode.py --model tiny --device cpu --workdir /tmp/bench   # dry run on the CPU
    python bench/decode.py --sweep            # time the GEMV kernel configurations per weight shape
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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
from internlm_demo.serving.chat_model import ChatModel

GIB = 1024**3
SHAPES = {
    # internlm-chat-7b: config.json of the original repository
    "7b": {"hidden": 4096, "layers": 32, "heads": 32, "intermediate": 11008, "vocab": 103168, "bias": True,
           "max_position": 2048, "rotary_buffers": True},
    # internlm-chat-20b (config.json of the original repository: bias false, 60 layers, 4k window)
    "20b": {"hidden": 5120, "layers": 60, "heads": 40, "intermediate": 13824, "vocab": 103168, "bias": False,
            "max_position": 4096, "rotary_buffers": False},
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "vocab": 103168, "bias": True,
             "max_position": 2048, "rotary_buffers": True},
}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
TOKENIZER_SOURCES = (REPO.parent / "shared" / "fixtures" / "internlm-chat-7b-tiny", REPO / ".device" / "bench-assets")
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.02}
ALL_MODES = ("hf", "simple", "engine", "chat", "equality", "memory", "streams", "first_reply", "profile")


# ---- the checkpoint -------------------------------------------------------------------------------


def original_tensors(shape: dict):
    """(name, shape, kind) of every tensor in an original InternLM v1 checkpoint, in file order."""
    h, i, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    yield "model.embed_tokens.weight", (v, h), "matrix"
    for layer in range(shape["layers"]):
        prefix = f"model.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield f"{prefix}self_attn.{proj}.weight", (h, h), "matrix"
            if shape["bias"]:
                yield f"{prefix}self_attn.{proj}.bias", (h,), "bias"
        if shape["rotary_buffers"]:
            yield f"{prefix}self_attn.rotary_emb.inv_freq", (h // shape["heads"] // 2,), "inv_freq"
        yield f"{prefix}mlp.gate_proj.weight", (i, h), "matrix"
        yield f"{prefix}mlp.down_proj.weight", (h, i), "matrix"
        yield f"{prefix}mlp.up_proj.weight", (i, h), "matrix"
        yield f"{prefix}input_layernorm.weight", (h,), "norm"
        yield f"{prefix}post_attention_layernorm.weight", (h,), "norm"
    yield "model.norm.weight", (h,), "norm"
    yield "lm_head.weight", (v, h), "matrix"


def random_tensor(size, kind: str, head_dim: int, device) -> torch.Tensor:
    if kind == "inv_freq":
        return (1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)).half()
    values = torch.randn(size, device=device, dtype=torch.float16)
    if kind == "norm":
        return (1 + 0.1 * values).cpu()
    return (0.02 * values).cpu()


def save_checkpoint(folder: Path, shape: dict, device, shard_bytes: int, tokenizer_from: Path) -> float:
    """Write config, tokenizer and random float16 shards as the original repositories lay them out; seconds."""
    began = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    head_dim = shape["hidden"] // shape["heads"]
    config = {
        "architectures": ["InternLMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_internlm.InternLMConfig",
                     "AutoModel": "modeling_internlm.InternLMForCausalLM",
                     "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
        "bias": shape["bias"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": shape["hidden"], "initializer_range": 0.02, "intermediate_size": shape["intermediate"],
        "max_position_embeddings": shape["max_position"], "model_type": "internlm",
        "num_attention_heads": shape["heads"], "num_hidden_layers": shape["layers"], "pad_token_id": 0,
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.33.2", "use_cache": True, "vocab_size": shape["vocab"],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_from / name, folder / name)
    torch.manual_seed(0)
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
        shard = f"pytorch_model-{number:05d}-of-{len(groups):05d}.bin"
        state = {name: random_tensor(size, kind, head_dim, device) for name, size, kind in group}
        torch.save(state, folder / shard)
        total += sum(t.numel() * t.element_size() for t in state.values())
        weight_map.update({name: shard for name in state})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
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
    """The engine's raw greedy stream, its graph replay rate with no host reads, and at 1k context."""
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
    rows.append({"mode": "engine_graph_replay_only", "tokens": tokens,
                 "tok_s": engine.decode_only_tokens_per_s(tokens), "ttft_1024_ms": None, "peak_gib": None})
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
    """``streams`` threads chatting at once through one ChatModel: aggregate rate and queue order."""
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
        records[index] = {"stream": index, "arrived": arrived, "first_text": first, "done": time.perf_counter(),
                          "tokens": stats.new_tokens, "decode_tok_s": stats.tokens_per_s}

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
    by_arrival = [r["stream"] for r in sorted(records, key=lambda r: r["arrived"])]
    by_finish = [r["stream"] for r in sorted(records, key=lambda r: r["done"])]
    return {"streams": streams, "tokens_each": tokens, "batched": False,
            "aggregate_tok_s": sum(r["tokens"] for r in records) / (ended - began),
            "served_in_arrival_order": by_arrival == by_finish, "arrival_order": by_arrival,
            "finish_order": by_finish, "per_stream": records}


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


# ---- GEMV configurations --------------------------------------------------------------------------


# (BLOCK_N, BLOCK_K, num_warps, unroll)
SWEEP_CONFIGS = [(4, 1024, 4, 0), (4, 1024, 4, 1), (32, 256, 4, 0), (32, 256, 4, 1), (16, 512, 4, 0),
                 (16, 512, 4, 1), (8, 512, 4, 1), (2, 2048, 4, 1), (1, 4096, 4, 0), (4, 2048, 8, 1),
                 (2, 1024, 2, 1), (8, 1024, 8, 1)]


# around the winners of the full sweep, for the q/k/v (fused with RoPE) and o shapes
FOCUSED_SWEEP_CONFIGS = [(2, 2048, 4, 1), (4, 1024, 4, 1), (4, 2048, 4, 1), (8, 1024, 4, 1), (8, 512, 4, 1),
                         (16, 512, 4, 0), (32, 256, 4, 0), (2, 1024, 2, 1), (2, 4096, 8, 1), (1, 2048, 2, 1),
                         (2, 512, 1, 1), (8, 2048, 8, 1)]


def best_configs(sweep_files: list[Path]) -> dict:
    """The fastest configuration per weight shape; a later --sweep file overrides earlier ones for its shapes."""
    chosen = {}
    for path in sweep_files:
        best: dict[tuple[int, int], tuple[float, tuple]] = {}
        for row in json.loads(path.read_text())["gemv_sweep"]:
            for key, value in row.items():
                if key.startswith("(") and isinstance(value, float):
                    shape = tuple(row["shape"])
                    if value > best.get(shape, (0.0, None))[0]:
                        best[shape] = (value, tuple(int(v) for v in key.strip("()").split(",")))
        chosen.update({shape: config for shape, (_, config) in best.items()})
    return chosen


def sweep_gemv(device, out: Path | None = None, only: set[str] | None = None,
               configs: list[tuple] = SWEEP_CONFIGS) -> list[dict]:
    """Bandwidth of each GEMV configuration on the decode step's weight shapes (weights rotated past L2).

    ``only`` limits it to entries such as "7b:qkv"; q/k/v is timed as the fused RMSNorm+GEMV+RoPE kernel.
    """
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    rows = []
    for model_name in ("7b", "20b"):
        s = SHAPES[model_name]
        h, i, v = s["hidden"], s["intermediate"], s["vocab"]
        heads, head_dim = s["heads"], s["hidden"] // s["heads"]
        table = torch.randn(64, head_dim, device=device, dtype=torch.float16)
        caches = [torch.zeros(1, heads, 64, head_dim, device=device, dtype=torch.float16) for _ in range(2)]
        position = torch.tensor([5], device=device)
        for label, (n, k), kind in (("qkv", (3 * h, h), "rope"), ("o", (h, h), "residual"),
                                    ("gate_up", (2 * i, h), "gated"), ("down", (h, i), "residual"),
                                    ("lm_head", (v, h), "norm")):
            if only and f"{model_name}:{label}" not in only:
                continue
            copies = max(2, math.ceil(512 * 2**20 / (n * k * 2)))
            weights = [0.02 * torch.randn(n, k, device=device, dtype=torch.float16) for _ in range(copies)]
            x = torch.randn(1, k, device=device, dtype=torch.float16)
            norm = torch.ones(k, device=device, dtype=torch.float16)
            residual = torch.zeros(1, n, device=device, dtype=torch.float16)
            row = {"model": model_name, "weight": label, "shape": [n, k]}

            def cublas(weights=weights, x=x):
                for w in weights:
                    torch.nn.functional.linear(x, w)
            row["cublas_GBps"] = n * k * 2 * copies / graph_time(cublas) / 1e9
            for config in configs:
                kernels = TritonDecodeKernels({(n, k): config})

                def run(kernels=kernels, weights=weights, x=x, norm=norm, residual=residual, kind=kind, table=table,
                        caches=caches, position=position, heads=heads):
                    for w in weights:
                        if kind == "rope":
                            kernels.norm_linear_rope_store(x, norm, 1e-6, w, None, table, table, *caches, position,
                                                           heads, heads)
                        elif kind == "norm":
                            kernels.norm_linear(x, norm, 1e-6, w, None)
                        elif kind == "gated":
                            kernels.norm_gated_linear(x, norm, 1e-6, w, None)
                        else:
                            kernels.linear_add(x, w, None, residual)
                try:
                    row[str(config)] = n * k * 2 * copies / graph_time(run) / 1e9
                except Exception as exc:  # noqa: BLE001 - a configuration the compiler rejects is reported
                    row[str(config)] = f"failed: {str(exc).splitlines()[0][:80]}"
            rows.append(row)
            del weights
            if out:  # written after every shape, so a run cut short still leaves its results
                out.write_text(json.dumps({"gemv_sweep": rows}, indent=2))
            timings = {k: v for k, v in row.items() if k.startswith("(") and isinstance(v, float)}
            best = max(timings, key=timings.get) if timings else None
            print(f"{model_name} {label} {n}x{k}: cuBLAS {row['cublas_GBps']:.0f} GB/s, best {best} "
                  f"{timings.get(best, 0):.0f} GB/s; " + " ".join(f"{c}={v:.0f}" for c, v in timings.items()), flush=True)
    return rows


def graph_time(fn, replays: int = 20) -> float:
    """Seconds per call of ``fn`` captured in a CUDA graph (after a warm-up that compiles kernels)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / replays


# ---- kernel self-test at real shapes --------------------------------------------------------------


def kernel_check(engine: FastEngine) -> dict:
    """Each Triton operation against the torch reference on this model's real layer-0 tensors."""
    from internlm_demo.generation.engine import TorchDecodeKernels

    if engine.kernels.name != "triton":
        return {"skipped": "the engine runs torch kernels"}
    torch_ops, triton_ops = TorchDecodeKernels(), engine.kernels
    w, device, dtype = engine.layers[0], engine.device, engine.dtype
    hidden = w.qkv.shape[1]

    def relative(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())
    x = torch.randn(1, hidden, device=device, dtype=dtype)
    report = {}
    with torch.inference_mode():
        report["norm_linear"] = relative(triton_ops.norm_linear(x, w.input_norm, engine.eps, w.qkv, w.qkv_bias),
                                         torch_ops.norm_linear(x, w.input_norm, engine.eps, w.qkv, w.qkv_bias))
        report["norm_gated_linear"] = relative(
            triton_ops.norm_gated_linear(x, w.post_norm, engine.eps, w.gate_up, w.gate_up_bias),
            torch_ops.norm_gated_linear(x, w.post_norm, engine.eps, w.gate_up, w.gate_up_bias))
        a, b = x.clone(), x.clone()
        wide = torch.randn(1, w.down.shape[1], device=device, dtype=dtype)
        triton_ops.linear_add(wide, w.down, w.down_bias, a)
        torch_ops.linear_add(wide, w.down, w.down_bias, b)
        report["linear_add"] = relative(a, b)
        position = torch.tensor([777], device=device)
        caches = [torch.randn(1, engine.kv_heads, 1024, engine.head_dim, device=device, dtype=dtype) for _ in range(2)]
        copies = [c.clone() for c in caches]
        args = (x, w.input_norm, engine.eps, w.qkv, w.qkv_bias, engine.cos_table, engine.sin_table)
        q1 = triton_ops.norm_linear_rope_store(*args, *caches, position, engine.heads, engine.kv_heads)
        q2 = torch_ops.norm_linear_rope_store(*args, *copies, position, engine.heads, engine.kv_heads)
        report["norm_linear_rope_store"] = relative(q1, q2)
        report["kv_store"] = max(relative(c[0, :, 777], d[0, :, 777]) for c, d in zip(caches, copies))
        report["attention"] = relative(triton_ops.attention(q1, *caches, position, engine.scale),
                                       torch_ops.attention(q1.float(), caches[0].float(), caches[1].float(),
                                                           position, engine.scale))
    return report


def profile_decode(engine: FastEngine, steps: int = 5) -> str:
    """Per-kernel GPU time of the decode step (run eagerly: the same kernels the graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        engine._start([1, 2, 3], GenerationParams(do_sample=False, max_new_tokens=steps + 2), False)
        engine._decode_step(False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                engine._decode_step(False)
            torch.cuda.synchronize()
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in rows)
    lines = [f"decode step, {steps} eager steps: {total / steps / 1000:.3f} ms of kernel time per step"]
    for event in rows[:14]:
        lines.append(f"{getattr(event, key) / steps:9.1f} us/step {event.count // steps:4d}x  {event.key[:90]}")
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
    for key in ("equality", "equality_torch_kernels", "memory_2k", "first_reply_cold", "first_reply_warm"):
        if key in result:
            shown = {k: v for k, v in result[key].items() if k not in ("plain", "engine", "per_stream")}
            print(f"{key}: {json.dumps(shown)}")
    if "streams" in result:
        shown = {k: v for k, v in result["streams"].items() if k != "per_stream"}
        print(f"streams: {json.dumps(shown)}")
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
    parser.add_argument("--hf-tokens", type=int, default=32)
    parser.add_argument("--shard-gib", type=float, default=2.0)
    parser.add_argument("--sweep", action="store_true", help="only time the GEMV configurations")
    parser.add_argument("--sweep-only", default="", help="e.g. 7b:qkv,7b:o (default: every shape)")
    parser.add_argument("--gemv-configs", type=Path, nargs="*", default=[],
                        help="--sweep JSON files: use the fastest configuration per shape instead of the built-in table")
    parser.add_argument("--first-reply-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_reply_child:
        first_reply_child(args.first_reply_child)
        return
    device = args.device
    result = {"date": date.today().isoformat(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}
    if args.sweep:
        only = set(args.sweep_only.split(",")) if args.sweep_only else None
        sweep_gemv(device, args.out, only, SWEEP_CONFIGS if only is None else FOCUSED_SWEEP_CONFIGS)
        return
    import transformers
    if args.gemv_configs:
        from internlm_demo.generation import triton_kernels as decode_kernels
        decode_kernels.GEMV_CONFIGS.update(best_configs([p for p in args.gemv_configs if p.is_file()]))
        result["gemv_configs"] = {f"{n}x{k}": c for (n, k), c in decode_kernels.GEMV_CONFIGS.items()}
        print("GEMV configurations:", result["gemv_configs"], flush=True)
    modes = set(args.modes.split(","))
    shape = SHAPES[args.model]
    tokenizer_from = next((p for p in TOKENIZER_SOURCES if (p / "tokenizer.model").is_file()), None)
    if tokenizer_from is None:
        sys.exit(f"no tokenizer.model in {' or '.join(map(str, TOKENIZER_SOURCES))}")
    folder = args.workdir / f"internlm-chat-{args.model}-random"
    result.update(model=args.model, shape=shape, transformers=transformers.__version__, folder=str(folder))
    result["save_s"] = save_checkpoint(folder, shape, device, int(args.shard_gib * GIB), tokenizer_from)
    result["roofline"] = {"bandwidth": read_bandwidth(device)}
    reset_peak(device)
    began = time.perf_counter()
    chat = load_chat_model(folder, device=device, dtype="float16", engine="fast", progress=False)
    result["load_with_engine_s"] = time.perf_counter() - began
    result["load_peak_gib"] = peak_gib(device)
    engine = chat.engine
    read_bps = result["roofline"]["bandwidth"]["read"]
    total = weight_bytes(chat.model)
    result["roofline"].update(read_bandwidth_Bps=read_bps, weight_bytes=total, ceiling_tok_s=read_bps / total,
                              decode_read_bytes=total - chat.model.model.embed_tokens.weight.numel() * 2)
    result["engine"] = {"kernels": engine.kernels.name, "graphs": bool(engine._graphs), "capacity": engine.capacity}
    result["kernel_check"] = kernel_check(engine)
    print(json.dumps({k: result[k] for k in ("roofline", "engine", "kernel_check", "load_with_engine_s")}), flush=True)
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
            record("equality_torch_kernels",
                   lambda: greedy_equality(chat, FastEngine(chat.model, kernels="torch"), short_ids, 64))
    if "profile" in modes and torch.device(device).type == "cuda":
        record("profile", lambda: profile_decode(engine))
    if "memory" in modes:
        record("memory_2k", lambda: memory_at_2k(engine, long_ids, device))
    if "streams" in modes:
        record("streams", lambda: concurrent_streams(chat, 8, 128))
    if "first_reply" in modes:
        cache = Path(tempfile.mkdtemp(prefix="triton-cache-"))
        record("first_reply_cold", lambda: first_reply(folder, cache))
        record("first_reply_warm", lambda: first_reply(folder, cache))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print_table(result)


if __name__ == "__main__":
    main()
