"""num_gpus on one host, on the batched engine: speed, equality and memory against one GPU, one run.

Writes InternLM-chat-20B-shaped random weights in the original format (and, with --xcomposer, an
internlm-xcomposer-7b-shaped checkpoint through bench/xcomposer.py), loads them on one GPU and then with
``num_gpus=N`` (the engine runs one block of layers per GPU), and prints/writes one JSON with, per N: the
engine's blocks, weight bytes and memory held per GPU (and their spread against an even split), GPU 0's
peak while loading against its final share, whether the first 64 greedy tokens equal the single-GPU
run's, batch-1 ``stream_chat`` tok/s and 8 concurrent sessions' aggregate, both as ratios to one GPU.
On the CPU (``--device cpu``, a dry run) the N blocks are all on "cpu".

    python bench/multi_gpu.py --gpus 2 --out bench-multi-gpu.json
    python bench/multi_gpu.py --model tiny --device cpu --gpus 2 --tokens 8 --stream-tokens 8 --out /tmp/mg.json  # dry run
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from decode import SHAPES, concurrent_streams, save_checkpoint, tokenizer_folder

from internlm_demo import GenerationParams, GenerationStats, load_chat_model
from internlm_demo.generation.engine import FastEngine

GIB = 1024**3
GREEDY_TOKENS = 64


def gpu_count() -> int:
    return torch.cuda.device_count()


def reset_peaks() -> None:
    for gpu in range(gpu_count()):
        torch.cuda.reset_peak_memory_stats(gpu)


def held_gib() -> list[float]:
    return [torch.cuda.memory_allocated(gpu) / GIB for gpu in range(gpu_count())]


def peak_gib() -> list[float]:
    return [torch.cuda.max_memory_allocated(gpu) / GIB for gpu in range(gpu_count())]


def weight_gib_per_device(model) -> dict[str, float]:
    sizes = Counter()
    for parameter in model.parameters():
        sizes[str(parameter.device)] += parameter.numel() * parameter.element_size()
    return {device: size / GIB for device, size in sorted(sizes.items())}


def spread_over_even(values) -> float:
    values = list(values)
    return max(values) / (sum(values) / len(values)) - 1


def even_blocks(layers: int, count: int, device: str) -> list[tuple[str, int]]:
    return [(device, layers // count + (i < layers % count)) for i in range(count)]


def load(folder: Path, count: int, device: str, single):
    """The chat model on ``count`` GPUs (num_gpus), or on the CPU with ``count`` engine blocks over ``single``'s weights."""
    if device == "cpu":
        if count == 1:
            return load_chat_model(folder, device="cpu", dtype="float32", engine="fast", progress=False)
        chat = copy.copy(single)
        chat.engine = FastEngine(single.model, blocks=even_blocks(len(single.model.model.layers), count, "cpu"))
        return chat
    kwargs = {"device": "cuda:0"} if count == 1 else {"num_gpus": count}
    return load_chat_model(folder, dtype="float16", engine="fast", progress=False, **kwargs)


def greedy_ids(chat, prompt_ids: list[int], tokens: int) -> list[int]:
    return list(chat.engine.generate(prompt_ids, GenerationParams(do_sample=False, max_new_tokens=tokens), set()))


def chat_rate(chat, tokens: int) -> float:
    """Batch-1 tok/s through ChatModel.stream_chat (greedy), after a warm-up."""
    for _ in chat.stream_chat("Tell me a long story.", [], do_sample=False, max_new_tokens=4):
        pass
    stats = GenerationStats()
    for _ in chat.stream_chat("Tell me a long story.", [], stats=stats, do_sample=False, max_new_tokens=tokens):
        pass
    return stats.tokens_per_s


def measure_chat(folder: Path, gpu_counts: list[int], tokens: int, sessions: int, stream_tokens: int,
                 device: str) -> dict:
    results, single = {}, None
    for count in [1, *[n for n in gpu_counts if n > 1]]:
        if device != "cpu":
            reset_peaks()
        began = time.perf_counter()
        chat = load(folder, count, device, single)
        row = {"num_gpus": count, "load_s": time.perf_counter() - began,
               "engine_blocks": [(str(b.device), len(b.layers)) for b in chat.engine.blocks],
               "weight_gib": weight_gib_per_device(chat.model)}
        if device != "cpu":
            load_peaks, held = peak_gib(), held_gib()
            row.update(held_gib=held[:count], gpu0_peak_during_load_gib=load_peaks[0], gpu0_final_gib=held[0],
                       gpu0_peak_over_final=load_peaks[0] / held[0] if held[0] else None,
                       weight_spread_over_even=spread_over_even(row["weight_gib"].values()),
                       held_spread_over_even=spread_over_even(held[:count]))
        prompt = chat.tokenizer.encode(chat.build_prompt("Tell me a long story.", []))
        ids = greedy_ids(chat, prompt, GREEDY_TOKENS)
        row["chat_stream_tok_s"] = chat_rate(chat, tokens)
        streams = concurrent_streams(chat, sessions, stream_tokens)
        row[f"streams_{sessions}"] = {k: v for k, v in streams.items() if k != "per_stream"}
        if count == 1:
            single = chat if device == "cpu" else None
            results["greedy_ids"] = ids
        else:
            row["greedy_64_equal_to_single_gpu"] = ids == results["greedy_ids"]
            row["chat_speed_vs_single"] = row["chat_stream_tok_s"] / results[1]["chat_stream_tok_s"]
            row["streams_vs_single"] = (streams["aggregate_tok_s"]
                                        / results[1][f"streams_{sessions}"]["aggregate_tok_s"])
        results[count] = row
        print(json.dumps(row), flush=True)
        if chat is not single:  # on the CPU the one-block model lends its weights to the N-block engines
            chat.engine.close()
            del chat
            gc.collect()
            if device != "cpu":
                torch.cuda.empty_cache()
    return results


def measure_xcomposer(workdir: Path, gpu_counts: list[int], fixtures: Path) -> dict:
    from xcomposer import write_xcomposer_checkpoint

    from internlm_demo.xcomposer import load_xcomposer
    from internlm_demo.xcomposer.demo import REAL_DIMS
    from internlm_demo.xcomposer.prompts import chat_segments

    folder = workdir / "xcomposer-7b-shapes"
    write_xcomposer_checkpoint(folder, REAL_DIMS, "cuda", fixtures)
    image = fixtures / "xcomposer-test-image.png"
    results, single = {}, None
    for count in [1, *[n for n in gpu_counts if n > 1]]:
        reset_peaks()
        kwargs = {"device": "cuda:0"} if count == 1 else {"num_gpus": count}
        model = load_xcomposer(folder, dtype="float16", progress=False, **kwargs)
        load_peaks, held = peak_gib(), held_gib()
        embeds = model.embed(chat_segments("What is in the picture?", model.encode_image(image), None))
        ids = model.decoder(embeds, num_beams=1, max_new_tokens=GREEDY_TOKENS).run()
        row = {"num_gpus": count, "llm_weight_gib": weight_gib_per_device(model.llm), "held_gib": held[:count],
               "gpu0_peak_during_load_gib": load_peaks[0],
               "gpu0_final_gib": held[0], "gpu0_peak_over_final": load_peaks[0] / held[0]}
        if count == 1:
            single = ids
        else:
            row["greedy_64_equal_to_single_gpu"] = ids == single
        results[count] = row
        print(json.dumps(row), flush=True)
        if model.engine is not None:  # its scheduler holds the model: GPU 0 kept the one-GPU copy otherwise
            model.engine.close()
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("20b", "7b", "tiny"), default="20b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run with CPU blocks")
    parser.add_argument("--gpus", default="2", help="comma-separated GPU (or CPU block) counts to compare with one")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens of the batch-1 stream_chat rate")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent stream_chat sessions")
    parser.add_argument("--stream-tokens", type=int, default=256, help="new tokens per concurrent session")
    parser.add_argument("--xcomposer", action="store_true", help="also XComposer-7B shapes (GPUs only)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures",
                        help="the golden fixtures (tokenizers, test image); on the GPU machine a carried copy")
    parser.add_argument("--out", type=Path, default=Path("bench-multi-gpu.json"))
    args = parser.parse_args(argv)
    gpu_counts = [int(n) for n in args.gpus.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run the dry run with --device cpu (--model tiny).")
    if args.device == "cuda" and max(gpu_counts) > gpu_count():
        raise SystemExit(f"asked for {max(gpu_counts)} GPUs, torch sees {gpu_count()}")
    if args.xcomposer and args.device == "cpu":
        raise SystemExit("--xcomposer needs GPUs; bench/xcomposer.py --model tiny --device cpu is its dry run.")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="internlm-multi-gpu-"))
    tokenizer_from = next(path for path in (args.fixtures / "internlm-chat-7b-tiny", tokenizer_folder(SHAPES[args.model]))
                          if path and (path / "tokenizer.model").is_file())
    folder = workdir / f"internlm-chat-{args.model}-shapes"
    if not (folder / "pytorch_model.bin.index.json").is_file():
        seconds = save_checkpoint(folder, SHAPES[args.model], args.device, 4 * GIB, tokenizer_from)
        print(f"wrote {folder} in {seconds:.0f} s", flush=True)
    result = {"date": date.today().isoformat(), "device": args.device,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "gpus_seen": gpu_count(), "model_shapes": args.model, "torch": torch.__version__,
              "chat": measure_chat(folder, gpu_counts, args.tokens, args.sessions, args.stream_tokens, args.device)}
    if args.xcomposer:
        result["xcomposer"] = measure_xcomposer(workdir, gpu_counts, args.fixtures)
    args.out.write_text(json.dumps(result, indent=2))
    for count, row in result["chat"].items():
        if count != "greedy_ids":
            shown = {k: row[k] for k in ("engine_blocks", "chat_stream_tok_s", "chat_speed_vs_single",
                                         "greedy_64_equal_to_single_gpu", "held_spread_over_even",
                                         "weight_spread_over_even", "streams_vs_single") if k in row}
            print(f"num_gpus={count}: {json.dumps(shown)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
