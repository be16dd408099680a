"""num_gpus on one host: memory per GPU, load-time peak on GPU 0, greedy equality and decode speed.

Writes InternLM-chat-20B-shaped random weights in the original format (and, with --xcomposer, an
internlm-xcomposer-7b-shaped checkpoint), loads them on one GPU and then with ``num_gpus=N``, and
prints/writes one JSON with, per N: bytes held per GPU (and their spread against an even split),
GPU 0's peak while loading against its final share, whether the first 64 greedy tokens equal the
single-GPU run, and batch-1 decode tok/s against the single-GPU figure (same generation path).

    python bench/multi_gpu.py --gpus 2 --out bench-multi-gpu.json
    python bench/multi_gpu.py --model tiny --gpus 1 --workdir /tmp/mg     # dry run (one GPU or CPU)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from decode import SHAPES, save_checkpoint, tokenizer_folder

from internlm_demo import GenerationParams, GenerationStats, load_chat_model
from internlm_demo.generation.simple import generate_ids

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


def decode_rate(model, prompt_ids: list[int], tokens: int) -> tuple[list[int], float]:
    """Greedy ids and tok/s through the simple path (the one every placement supports)."""
    list(generate_ids(model, prompt_ids, GenerationParams(do_sample=False, max_new_tokens=4), set()))
    stats = GenerationStats()
    ids = list(generate_ids(model, prompt_ids, GenerationParams(do_sample=False, max_new_tokens=tokens), set(), stats))
    return ids, stats.tokens_per_s


def chat_rate(chat, tokens: int) -> float:
    """tok/s through ChatModel.stream_chat (the fast engine where it applies), greedy."""
    stats = GenerationStats()
    for _ in chat.stream_chat("Tell me a long story.", [], stats=stats, do_sample=False, max_new_tokens=tokens):
        pass
    return stats.tokens_per_s


def measure_chat(folder: Path, gpu_counts: list[int], tokens: int) -> dict:
    results = {}
    single_ids = None
    for count in [1, *[n for n in gpu_counts if n > 1]]:
        reset_peaks()
        began = time.perf_counter()
        kwargs = {"device": "cuda:0"} if count == 1 else {"num_gpus": count}
        chat = load_chat_model(folder, dtype="float16", progress=False, **kwargs)
        load_s = time.perf_counter() - began
        load_peaks, held = peak_gib(), held_gib()
        prompt = chat.tokenizer.encode(chat.build_prompt("Tell me a long story.", []))
        ids, simple_rate = decode_rate(chat.model, prompt, tokens)
        row = {
            "num_gpus": count, "load_s": load_s, "held_gib": held[:count],
            "gpu0_peak_during_load_gib": load_peaks[0], "gpu0_final_gib": held[0],
            "gpu0_peak_over_final": load_peaks[0] / held[0] if held[0] else None,
            "spread_over_even": max(held[:count]) / (sum(held[:count]) / count) - 1,
            "simple_path_tok_s": simple_rate, "chat_stream_tok_s": chat_rate(chat, tokens),
            "device_map_devices": sorted(set(chat.info.device_map.values())),
        }
        if count == 1:
            single_ids = ids[:GREEDY_TOKENS]
        else:
            row["greedy_64_equal_to_single_gpu"] = ids[:GREEDY_TOKENS] == single_ids
            row["simple_path_speed_vs_single"] = simple_rate / results[1]["simple_path_tok_s"]
            row["chat_speed_vs_single"] = row["chat_stream_tok_s"] / results[1]["chat_stream_tok_s"]
        results[count] = row
        print(json.dumps(row), flush=True)
        del chat
        gc.collect()
        torch.cuda.empty_cache()
    return results


def measure_xcomposer(workdir: Path, gpu_counts: list[int], fixtures: Path) -> dict:
    from internlm_demo.xcomposer import load_xcomposer
    from internlm_demo.xcomposer.demo import REAL_DIMS, RandomTensors, demo_config, random_xcomposer_state_dict
    from internlm_demo.xcomposer.prompts import chat_segments

    folder = workdir / "xcomposer-7b-shapes"
    folder.mkdir(parents=True, exist_ok=True)
    fixture = fixtures / "internlm-xcomposer-7b-tiny"
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((fixture / name).read_bytes())
    (folder / "config.json").write_text(json.dumps(demo_config(103168, REAL_DIMS)))
    draw = RandomTensors(1234, device="cuda", dtype=torch.float16)
    state = random_xcomposer_state_dict(103168, REAL_DIMS, draw)
    torch.save(state, folder / "pytorch_model.bin")
    del state
    image = fixtures / "xcomposer-test-image.png"
    results, single = {}, None
    for count in [1, *[n for n in gpu_counts if n > 1]]:
        reset_peaks()
        kwargs = {"device": "cuda:0"} if count == 1 else {"num_gpus": count}
        model = load_xcomposer(folder, dtype="float16", progress=False, **kwargs)
        load_peaks, held = peak_gib(), held_gib()
        embeds = model.embed(chat_segments("What is in the picture?", model.encode_image(image), None))
        ids = model.decoder(embeds, num_beams=1, max_new_tokens=GREEDY_TOKENS).run()
        row = {"num_gpus": count, "held_gib": held[:count], "gpu0_peak_during_load_gib": load_peaks[0],
               "gpu0_final_gib": held[0], "gpu0_peak_over_final": load_peaks[0] / held[0]}
        if count == 1:
            single = ids
        else:
            row["greedy_64_equal_to_single_gpu"] = ids == single
        results[count] = row
        print(json.dumps(row), flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("20b", "7b", "tiny"), default="20b")
    parser.add_argument("--gpus", default="2", help="comma-separated GPU counts to compare with one GPU")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--xcomposer", action="store_true", help="also XComposer-7B shapes")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures",
                        help="the golden fixtures (tokenizers, test image); on the GPU machine a carried copy")
    parser.add_argument("--out", type=Path, default=Path("bench-multi-gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/multi_gpu.py needs CUDA GPUs (the device maps themselves are tested on CPU).")
    gpu_counts = [int(n) for n in args.gpus.split(",")]
    if max(gpu_counts) > gpu_count():
        raise SystemExit(f"asked for {max(gpu_counts)} GPUs, torch sees {gpu_count()}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="internlm-multi-gpu-"))
    tokenizer_from = next(path for path in (args.fixtures / "internlm-chat-7b-tiny", tokenizer_folder(SHAPES[args.model]))
                          if path and (path / "tokenizer.model").is_file())
    folder = workdir / f"internlm-chat-{args.model}-shapes"
    if not (folder / "pytorch_model.bin.index.json").is_file():
        seconds = save_checkpoint(folder, SHAPES[args.model], "cuda", 4 * GIB, tokenizer_from)
        print(f"wrote {folder} in {seconds:.0f} s", flush=True)
    result = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(0), "gpus_seen": gpu_count(),
              "model_shapes": args.model, "torch": torch.__version__,
              "chat": measure_chat(folder, gpu_counts, args.tokens)}
    if args.xcomposer:
        result["xcomposer"] = measure_xcomposer(workdir, gpu_counts, args.fixtures)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
