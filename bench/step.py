"""The decode step's kernels at every batch bucket, in the real shapes: block-shape sweeps and step rates.

No checkpoint and no engine: random weights of a family's real shapes sit on the GPU, and one decode
step (the same ``DecodeKernels`` calls the engine makes: RMSNorm+q/k/v+RoPE+KV store, attention, o +
residual, RMSNorm+gate/up+SiLU, down + residual, RMSNorm+lm_head, sampling) is captured as a CUDA graph
per batch size and replayed. The HBM read bandwidth is measured in the same process, so each rate comes
with its ratio to the memory-bound limit (every weight read once per step).

    python bench/step.py --sweep --out sweep.json          # block shapes per weight shape and bucket
    python bench/step.py --rates --out rates.json          # step rates per family, dtype and bucket
    python bench/step.py --sweep --rates --apply-sweep     # both, the rates with the sweep's choices
    python bench/step.py --profile --families 7b           # GPU time per kernel of one step, per bucket
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import GIB, SHAPES, kernel_times, read_bandwidth  # noqa: E402

from internlm_demo.generation import triton_kernels  # noqa: E402
from internlm_demo.generation.triton_kernels import TritonDecodeKernels  # noqa: E402

FAMILIES = ("7b", "20b", "internlm2-7b", "internlm2-20b", "internlm3-8b")
BUCKETS = (1, 2, 4, 8, 16)
SAMPLING = dict(penalty=1.02, temperature=0.8, top_k=40, top_p=0.8)
# Batch 1: (BLOCK_N, BLOCK_K, num_warps, unroll); two rows or more: (BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K])
GEMV_SWEEP = [(1, 2048, 2, 1), (2, 2048, 4, 1), (4, 2048, 4, 1), (4, 1024, 4, 0), (2, 1024, 2, 1), (8, 1024, 8, 1),
              (16, 512, 4, 0), (4, 2048, 8, 1)]
ROWS_SWEEP = [(32, 256, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 3), (128, 64, 4, 4),
              (64, 512, 4, 2), (32, 512, 4, 3), (128, 256, 8, 3), (16, 256, 4, 4), (16, 512, 4, 3),
              (16, 1024, 4, 2), (32, 256, 4, 3, 2), (32, 512, 4, 3, 2), (32, 256, 4, 3, 4), (64, 256, 4, 3, 4)]
SWEEP_BUCKETS = (1, 4, 16)  # 1: the batched kernel for one row, against the GEMV


def head_dim(shape: dict) -> int:
    return shape["hidden"] // shape["heads"]


def weight_shapes(shape: dict) -> dict[str, tuple[int, int]]:
    """(rows, columns) of each matrix the decode step reads, by role."""
    h, i, d = shape["hidden"], shape["intermediate"], head_dim(shape)
    heads, kv_heads = shape["heads"], shape.get("kv_heads", shape["heads"])
    return {"qkv": ((heads + 2 * kv_heads) * d, h), "o": (h, heads * d), "gate_up": (2 * i, h), "down": (h, i),
            "lm_head": (shape["vocab"], h)}


def graph_time(fn, replays: int = 20) -> float:
    """Seconds per call of ``fn`` captured in a CUDA graph (after a warm-up call that compiles kernels)."""
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


# ---- sweep ----------------------------------------------------------------------------------------


def time_shape(kernels: TritonDecodeKernels, role: str, weights: list[torch.Tensor], batch: int, shape: dict,
               dtype, warm_only: bool = False) -> float:
    """Seconds per pass over ``weights`` (copies rotated past L2) of the role's kernel at ``batch`` rows."""
    n, k = weights[0].shape
    device = weights[0].device
    x = torch.randn(batch, k, device=device, dtype=dtype)
    norm = torch.ones(k, device=device, dtype=dtype)
    residual = torch.zeros(batch, n, device=device, dtype=dtype)
    d, heads, kv_heads = head_dim(shape), shape["heads"], shape.get("kv_heads", shape["heads"])
    table = torch.randn(64, d, device=device, dtype=dtype)
    caches = [torch.zeros(batch, kv_heads, 64, d, device=device, dtype=dtype) for _ in range(2)]
    positions = torch.full((batch,), 5, device=device)

    def run():
        for w in weights:
            if role == "qkv":
                kernels.norm_linear_rope_store(x, norm, 1e-6, w, None, table, table, *caches, positions, heads, kv_heads)
            elif role == "lm_head":
                kernels.norm_linear(x, norm, 1e-6, w, None)
            elif role == "gate_up":
                kernels.norm_gated_linear(x, norm, 1e-6, w, None)
            else:
                kernels.linear_add(x, w, None, residual)
    if warm_only:  # compile (into Triton's disk cache) without timing
        run()
        return 1.0
    return graph_time(run)


def sweep(dtype, out: Path | None, families=FAMILIES, warm_only: bool = False) -> list[dict]:
    """GB/s of every batch-1 and every batched block shape on each distinct weight shape (batch-1 shapes
    that ``GEMV_CONFIGS`` already holds are not swept again)."""
    rows, done = [], set()
    for family in families:
        shape = SHAPES[family]
        for role, (n, k) in weight_shapes(shape).items():
            if (n, k, role) in done:
                continue
            done.add((n, k, role))
            copies = max(2, -(-512 * 2**20 // (n * k * 2)))
            weights = [0.02 * torch.randn(n, k, device="cuda", dtype=dtype) for _ in range(copies)]
            nbytes = n * k * 2 * copies
            row = {"family": family, "role": role, "shape": [n, k], "gemv": {}, "rows": {}}
            row["cublas_b1_GBps"] = nbytes / cublas_time(weights) / 1e9
            for config in GEMV_SWEEP if (n, k) not in triton_kernels.GEMV_CONFIGS else []:
                try:
                    seconds = time_shape(TritonDecodeKernels({(n, k): config}), role, weights, 1, shape, dtype,
                                         warm_only)
                    row["gemv"][str(config)] = nbytes / seconds / 1e9
                except Exception as exc:  # noqa: BLE001 - a configuration the compiler rejects is reported
                    row["gemv"][str(config)] = f"failed: {str(exc).splitlines()[0][:80]}"
            for config in ROWS_SWEEP:
                if role == "qkv" and len(config) > 4:  # the q/k/v + RoPE kernel never splits K
                    continue
                for batch in SWEEP_BUCKETS:
                    try:
                        kernels = TritonDecodeKernels(rows_configs={(n, k): config}, gemv_for_one_row=False)
                        seconds = time_shape(kernels, role, weights, batch, shape, dtype, warm_only)
                        row["rows"][f"{config}@{batch}"] = nbytes / seconds / 1e9
                    except Exception as exc:  # noqa: BLE001
                        row["rows"][f"{config}@{batch}"] = f"failed: {str(exc).splitlines()[0][:80]}"
            rows.append(row)
            if warm_only:
                continue
            best_gemv, best_rows = choose(row)
            print(f"{family} {role} {n}x{k}: cuBLAS b1 {row['cublas_b1_GBps']:.0f} GB/s; batch 1 {best_gemv} "
                  f"{row['gemv'].get(str(best_gemv), 0):.0f}; rows {best_rows} "
                  + " ".join(f"@{b}={row['rows'].get(f'{best_rows}@{b}', 0):.0f}" for b in SWEEP_BUCKETS), flush=True)
            weights = None  # freed before the next shape's copies
            if out:
                out.write_text(json.dumps({"dtype": str(dtype), "sweep": rows}, indent=2))
    return rows


def cublas_time(weights: list[torch.Tensor]) -> float:
    """Seconds for torch's own one-row linear over ``weights`` (the cuBLAS reference)."""
    x = weights[0].new_zeros(1, weights[0].shape[1]).normal_()
    return graph_time(lambda: [torch.nn.functional.linear(x, w) for w in weights])


def choose(row: dict) -> tuple[tuple, tuple]:
    """The fastest batch-1 configuration, and the batched one with the best worst bucket of 2 rows or more
    (one configuration serves every batch size)."""
    def config(key: str) -> tuple:
        return tuple(int(v) for v in key.split("@")[0].strip("()").split(","))

    gemv = {k: v for k, v in row["gemv"].items() if isinstance(v, float)}
    best_gemv = config(max(gemv, key=gemv.get)) if gemv else None
    worst: dict[tuple, float] = {}
    for key, value in row["rows"].items():
        if key.endswith("@1"):
            continue
        if isinstance(value, float):
            worst[config(key)] = min(worst.get(config(key), float("inf")), value)
        else:
            worst[config(key)] = 0.0
    best_rows = max(worst, key=worst.get) if worst else None
    return best_gemv, best_rows


def apply_sweep(rows: list[dict]) -> dict:
    """Put the sweep's choices into the kernel tables; returns them."""
    chosen = {}
    for row in rows:
        best_gemv, best_rows = choose(row)
        shape = tuple(row["shape"])
        if best_gemv:
            triton_kernels.GEMV_CONFIGS[shape] = best_gemv
        if best_rows:
            triton_kernels.ROWS_CONFIGS[shape] = best_rows
        chosen[f"{shape[0]}x{shape[1]}"] = {"gemv": best_gemv, "rows": best_rows}
    return chosen


# ---- step rates -----------------------------------------------------------------------------------


class RandomModel:
    """A family's decode-step tensors with random values, and a cache of ``slots`` slots."""

    def __init__(self, shape: dict, dtype, slots: int, capacity: int):
        self.shape, self.dtype = shape, dtype
        h, d = shape["hidden"], head_dim(shape)
        self.heads, self.kv_heads = shape["heads"], shape.get("kv_heads", shape["heads"])
        roles = weight_shapes(shape)

        def matrix(role):
            return 0.02 * torch.randn(*roles[role], device="cuda", dtype=dtype)

        def bias(rows):
            return 0.02 * torch.randn(rows, device="cuda", dtype=dtype) if shape["bias"] else None

        def norm():
            return 1 + 0.1 * torch.randn(h, device="cuda", dtype=dtype)
        self.layers = []
        for _ in range(shape["layers"]):
            self.layers.append({"input_norm": norm(), "qkv": matrix("qkv"), "qkv_bias": bias(roles["qkv"][0]),
                                "o": matrix("o"), "o_bias": bias(h), "post_norm": norm(),
                                "gate_up": matrix("gate_up"), "down": matrix("down")})
        self.embed = 0.02 * torch.randn(shape["vocab"], h, device="cuda", dtype=dtype)
        self.final_norm, self.lm_head = norm(), matrix("lm_head")
        self.weight_bytes = sum(t.numel() * t.element_size() for t in self.tensors())
        cache_shape = (slots, self.kv_heads, capacity, d)
        self.k = [torch.randn(cache_shape, device="cuda", dtype=dtype) for _ in self.layers]
        self.v = [torch.randn(cache_shape, device="cuda", dtype=dtype) for _ in self.layers]
        angles = torch.arange(capacity, device="cuda")[:, None] * 1e-4 ** (torch.arange(d // 2, device="cuda") / d)
        self.cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
        self.sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
        vocab = shape["vocab"]
        self.token = torch.randint(0, vocab, (slots,), device="cuda")
        self.positions = torch.zeros(slots, dtype=torch.long, device="cuda")
        self.seen = torch.zeros(slots, vocab, dtype=torch.bool, device="cuda")
        self.seed = torch.arange(slots, device="cuda")
        self.step = torch.zeros(slots, dtype=torch.long, device="cuda")
        self.params = {name: torch.full((slots, 1), value, device="cuda") for name, value in SAMPLING.items()}
        self.params["top_k"] = self.params["top_k"].long()

    def tensors(self):
        for layer in self.layers:
            yield from (t for t in layer.values() if t is not None)
        yield from (self.embed, self.final_norm, self.lm_head)

    def decode_step(self, kernels, batch: int, sample: bool = True) -> None:
        """One token for rows 0..batch-1, as the engine's step: k/v stored, next ids chosen."""
        x = torch.nn.functional.embedding(self.token[:batch], self.embed)
        positions = self.positions[:batch]
        eps, scale = 1e-6, head_dim(self.shape) ** -0.5
        for w, k_cache, v_cache in zip(self.layers, self.k, self.v):
            q = kernels.norm_linear_rope_store(x, w["input_norm"], eps, w["qkv"], w["qkv_bias"], self.cos, self.sin,
                                               k_cache, v_cache, positions, self.heads, self.kv_heads)
            kernels.linear_add(kernels.attention(q, k_cache, v_cache, positions, scale), w["o"], w["o_bias"], x)
            hidden = kernels.norm_gated_linear(x, w["post_norm"], eps, w["gate_up"], None)
            kernels.linear_add(hidden, w["down"], None, x)
        logits = kernels.norm_linear(x, self.final_norm, eps, self.lm_head, None)
        p = self.params
        kernels.choose(logits, self.seen[:batch], p["penalty"][:batch], p["temperature"][:batch], p["top_k"][:batch],
                       p["top_p"][:batch], self.seed[:batch], self.step[:batch], self.token[:batch], sample, True)


def step_rates(family: str, dtype, read_bps: float, context: int, capacity: int | None, replays: int = 30) -> dict:
    """Decode-step time per bucket, with ``context`` cached positions per row (sampling and penalty on)."""
    shape = SHAPES[family]
    capacity = capacity or min(max(shape["max_position"], 2048), 8192) + 1
    model = RandomModel(shape, dtype, max(BUCKETS), capacity)
    limit_s = model.weight_bytes / read_bps
    result = {"family": family, "dtype": str(dtype).removeprefix("torch."), "context": context, "capacity": capacity,
              "weight_bytes": model.weight_bytes, "memory_bound_step_ms": 1000 * limit_s, "buckets": {}}
    with torch.inference_mode():
        # "1-batched": one row on the batched kernel, the alternative that makes rows batch-independent
        for label, batch, kernels in [(str(b), b, TritonDecodeKernels()) for b in BUCKETS] + [
                ("1-batched", 1, TritonDecodeKernels(gemv_for_one_row=False))]:
            model.positions.fill_(context)
            seconds = graph_time(lambda batch=batch, kernels=kernels: model.decode_step(kernels, batch), replays)
            result["buckets"][label] = {"step_ms": 1000 * seconds, "tok_s": batch / seconds,
                                        "ratio": limit_s / seconds}
            print(f"{family} {result['dtype']} B={label:>9}: {1000 * seconds:.3f} ms/step, {batch / seconds:7.1f} tok/s, "
                  f"{limit_s / seconds:.3f} of the memory-bound step", flush=True)
    model.layers = model.k = model.v = None
    torch.cuda.empty_cache()
    return result


def profile_step(family: str, dtype, context: int, buckets=(1, 16), steps: int = 10) -> dict:
    """GPU microseconds per kernel of one decode step (sampling and penalty on), launched eagerly."""
    from torch.profiler import ProfilerActivity, profile

    shape = SHAPES[family]
    model = RandomModel(shape, dtype, max(buckets), min(max(shape["max_position"], 2048), 8192) + 1)
    kernels, result = TritonDecodeKernels(), {}
    with torch.inference_mode():
        for batch in buckets:
            model.positions.fill_(context)
            model.decode_step(kernels, batch)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    model.decode_step(kernels, batch)
                torch.cuda.synchronize()
            per_step = kernel_times(prof, steps)
            total = sum(micros for micros, _ in per_step.values())
            result[str(batch)] = {"kernel_us_per_step": total, "kernels": per_step}
            print(f"{family} {str(dtype)[6:]} B={batch}: {total:.0f} us of kernels per step", flush=True)
            for name, (micros, launches) in list(per_step.items())[:16]:
                print(f"  {micros:8.1f} us {launches:6.1f}x  {name}", flush=True)
    model.layers = model.k = model.v = None
    torch.cuda.empty_cache()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--rates", action="store_true")
    parser.add_argument("--profile", action="store_true", help="GPU time per kernel of one step at B=1 and 16")
    parser.add_argument("--apply-sweep", type=Path, nargs="*", default=None,
                        help="sweep JSON files whose choices the rates use (no file: this run's sweep)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--context", type=int, default=256, help="cached positions per row during the step")
    parser.add_argument("--capacity", type=int, default=None,
                        help="positions per cache slot (default: the engine's, the window within 2,048..8,192, plus 1)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--warm-only", action="store_true", help="only compile the sweep's kernels (a child run)")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    if args.warm_only:
        sweep(dtypes[0], None, families, warm_only=True)
        return
    if args.sweep:  # compile every configuration first, one process per family, so the timed sweep is quick
        children = [subprocess.Popen([sys.executable, __file__, "--warm-only", "--families", family,
                                      "--dtypes", args.dtypes.split(",")[0]]) for family in families]
        for child in children:
            child.wait()
    result = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    bandwidth = read_bandwidth("cuda")
    result["read_bandwidth"] = bandwidth
    print(f"HBM read {bandwidth['read'] / 1e12:.2f} TB/s", flush=True)
    sweep_rows = []
    if args.sweep:
        sweep_out = args.out.with_name(args.out.stem + "-sweep.json") if args.out else None
        sweep_rows = sweep(dtypes[0], sweep_out, families)
        result["sweep_file"] = str(sweep_out)
    if args.apply_sweep is not None:
        for path in args.apply_sweep:
            sweep_rows += json.loads(path.read_text())["sweep"]
        result["chosen"] = apply_sweep(sweep_rows)
        print("chosen:", json.dumps(result["chosen"]), flush=True)
    if args.rates:
        result["rates"] = []
        for family in families:
            for dtype in dtypes:
                began = time.perf_counter()
                result["rates"].append(step_rates(family, dtype, bandwidth["read"], args.context, args.capacity))
                result["rates"][-1]["seconds"] = time.perf_counter() - began
                if args.out:
                    args.out.write_text(json.dumps(result, indent=2))
    if args.profile:
        result["profile"] = {f"{family}-{str(dtype)[6:]}": profile_step(family, dtype, args.context)
                             for family in families for dtype in dtypes}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(f"peak {torch.cuda.max_memory_allocated() / GIB:.1f} GiB")


if __name__ == "__main__":
    main()
