"""XComposer decode speed, old transformers Decoder against the engine: roofline, greedy, beam 5, article pipeline.

Writes internlm-xcomposer-7b-shaped random weights (EVA ViT-g, Q-Former with 64 queries, InternLM-7B with
rank-256 LoRA: ``xcomposer.demo.REAL_DIMS``, vocab 103,168) in the original on-disk format, or the tiny demo
dims with ``--model tiny``; loads them once through ``load_xcomposer`` (engine "fast") and, in the same
process, measures the HBM read bandwidth (as bench/decode.py) against the language model's weight bytes,
then greedy tok/s and beam-5 steps/s after an image prompt and the article pipeline stage by stage, each
on the old ``Decoder`` and on the ``EngineDecoder`` with the same inputs. Prints a table, writes JSON
(``--out``), and exits non-zero when the two paths' outputs differ (after writing the JSON).

    python bench/xcomposer.py --out bench-xcomposer.json                       # one H200
    python bench/xcomposer.py --model tiny --device cpu --tokens 8 --article-tokens 16 --caption-tokens 4 \
        --location-tokens 4 --gallery 12 --out /tmp/xc.json                    # CPU dry run
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from decode import FIXTURES, GIB, peak_gib, read_bandwidth, reset_peak, sync, weight_bytes

from internlm_demo.xcomposer import load_xcomposer
from internlm_demo.xcomposer.article import Article, ComposeSettings, XComposerWriter, illustrate
from internlm_demo.xcomposer.article import pipeline
from internlm_demo.xcomposer.demo import (
    REAL_DIMS,
    TOKENIZER_CONFIG,
    RandomTensors,
    XComposerDims,
    demo_config,
    random_xcomposer_state_dict,
)
from internlm_demo.xcomposer.gallery.demo import DEMO_IMAGES_PER_TOPIC, DEMO_TOPICS, draw_demo_image
from internlm_demo.xcomposer.gallery.index import open_gallery
from internlm_demo.xcomposer.prompts import chat_segments

VOCAB = 103168  # internlm-xcomposer-7b's vocab_size; the fixture's tokenizer is the original one
DIMS = {"real": REAL_DIMS, "tiny": XComposerDims()}
SECTIONS = 8  # the article is cut into this many sections when the model wrote fewer (random text has no paragraphs)


def write_xcomposer_checkpoint(folder: Path, dims: XComposerDims, device, fixtures: Path = FIXTURES,
                               dtype=torch.float16) -> float:
    """config.json, the fixture's (original) tokenizer and random weights in one pytorch_model.bin; seconds."""
    began = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    fixture = fixtures / "internlm-xcomposer-7b-tiny"
    shutil.copy(fixture / "tokenizer.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    (folder / "config.json").write_text(json.dumps(demo_config(VOCAB, dims), indent=2))
    state = random_xcomposer_state_dict(VOCAB, dims, RandomTensors(1234, device=str(device), dtype=dtype))
    torch.save(state, folder / "pytorch_model.bin")
    return time.perf_counter() - began


def old_path(model):
    """The same loaded XComposer deciding on the transformers ``Decoder`` (weights shared, no engine)."""
    old = copy.copy(model)
    old.engine = None
    return old


def timed_decode(model, embeds, device, **generation) -> dict:
    """Steps/s after the first step of one decoder run, and its output ids."""
    decoder = model.decoder(embeds, stop_ids=(), **generation)
    began = time.perf_counter()
    first, steps = None, 0
    for _ in decoder.steps():
        steps += 1
        if first is None:
            sync(device)
            first = time.perf_counter()
    sync(device)
    ended = time.perf_counter()
    rate = (steps - 1) / (ended - first) if steps > 1 else None
    return {"decoder": type(decoder).__name__, "steps": steps, "steps_per_s": rate,
            "first_step_ms": 1000 * (first - began) if first else None, "output_ids": decoder.output_ids}


def decode_modes(paths: dict, embeds, tokens: int, ceiling: float, device) -> dict:
    """Greedy and beam-5 on both paths (after a warm-up of each), with equality of the outputs."""
    result = {}
    for name, generation in (("greedy", {"num_beams": 1, "repetition_penalty": 1.0}),
                             ("beam5", {"num_beams": 5, "repetition_penalty": 1.0})):
        rows = {}
        for path, model in paths.items():
            timed_decode(model, embeds, device, max_new_tokens=4, **generation)
            reset_peak(device)
            rows[path] = timed_decode(model, embeds, device, max_new_tokens=tokens, **generation)
            rows[path]["peak_gib"] = peak_gib(device)
            if name == "greedy" and rows[path]["steps_per_s"]:
                rows[path]["ratio"] = rows[path]["steps_per_s"] / ceiling
        rows["equal"] = rows["old"]["output_ids"] == rows["engine"]["output_ids"]
        result[name] = rows
    return result


def write_gallery(folder: Path, count: int) -> Path:
    """``count`` drawn images with caption sidecars, the demo gallery's topics in turn."""
    for index in range(count):
        label, caption, sky, ground, motif = DEMO_TOPICS[index % len(DEMO_TOPICS)]
        english = label.split(" ", 1)[1]
        topic = folder / english.replace(" ", "-")
        topic.mkdir(parents=True, exist_ok=True)
        stem = f"{english.replace(' ', '-')}-{index}"
        variant = index // len(DEMO_TOPICS) % DEMO_IMAGES_PER_TOPIC  # the demo's drawings; the file names differ
        draw_demo_image(english, sky, ground, motif, variant, size=(224, 168)).save(topic / f"{stem}.png")
        (topic / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def article_run(model, gallery, title: str, settings: ComposeSettings, device) -> dict:
    """The article pipeline's stages, timed: writing (streamed, beam 5), then ``illustrate``'s events."""
    writer = XComposerWriter(model)
    times, began = {}, time.perf_counter()
    text = ""
    for chunk in writer.stream_text(pipeline.ARTICLE_PROMPT.format(title=title), **settings.article_generation()):
        text = chunk
    sync(device)
    times["writing"] = time.perf_counter() - began
    sections = pipeline.split_sections(text)
    if len(sections) < SECTIONS:
        width = max(1, len(text) // SECTIONS)
        sections = [text[i:i + width] for i in range(0, width * SECTIONS, width)]
    article = Article(title, sections, str(gallery.root))
    stage, mark = None, time.perf_counter()
    for event in illustrate(writer, gallery, article, settings):
        if event.stage != stage:
            now = time.perf_counter()
            if stage is not None:
                times[stage] = times.get(stage, 0.0) + now - mark
            stage, mark = event.stage, now
    times["total"] = sum(times.values())
    return {"seconds": times, "article_tokens_retokenized": len(model.tokenizer.encode(text, add_special_tokens=False)),
            "text": text, "placements": {p: [pl.caption, pl.image] for p, pl in article.placements.items()},
            "notes": article.notes}


def print_table(result: dict) -> None:
    roof = result["roofline"]
    print(f"\nXComposer {result['model']} on {result['gpu']} ({result['date']}): HBM read "
          f"{roof['read_bandwidth_Bps'] / 1e12:.3f} TB/s, LLM weights {roof['weight_bytes'] / GIB:.2f} GiB "
          f"-> roofline {roof['ceiling_tok_s']:.1f} tok/s")
    print(f"{'mode':10} {'path':7} {'decoder':14} {'steps':>6} {'steps/s':>9} {'ratio':>6} {'first ms':>9} {'equal':>6}")
    for mode in ("greedy", "beam5"):
        for path in ("old", "engine"):
            row = result[mode][path]
            ratio = f"{row['ratio']:.3f}" if row.get("ratio") is not None else "-"
            rate = f"{row['steps_per_s']:.1f}" if row["steps_per_s"] else "-"
            print(f"{mode:10} {path:7} {row['decoder']:14} {row['steps']:6} {rate:>9} {ratio:>6} "
                  f"{row['first_step_ms']:9.1f} {str(result[mode]['equal']):>6}")
    article = result["article"]
    stages = list(article["old"]["seconds"])
    print(f"article ({article['settings']}), seconds per stage:")
    print(f"{'stage':12} {'old':>9} {'engine':>9} {'speed-up':>9}")
    for stage in stages:
        old, new = article["old"]["seconds"][stage], article["engine"]["seconds"].get(stage)
        speedup = f"{old / new:.2f}x" if new else "-"
        print(f"{stage:12} {old:9.2f} {new if new is not None else float('nan'):9.2f} {speedup:>9}")
    print(f"article outputs equal: {article['equal']}; article tokens (re-encoded) old/engine: "
          f"{article['old']['article_tokens_retokenized']}/{article['engine']['article_tokens_retokenized']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DIMS), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                        help="default: float16 on a GPU, float32 on the CPU")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens of the greedy and beam-5 runs")
    parser.add_argument("--article-tokens", type=int, default=600, help="article length (beam 5)")
    parser.add_argument("--images", type=int, default=4, help="images placed in the article")
    parser.add_argument("--location-tokens", type=int, default=pipeline.LOCATION_GENERATION["max_new_tokens"])
    parser.add_argument("--caption-tokens", type=int, default=pipeline.CAPTION_GENERATION["max_new_tokens"])
    parser.add_argument("--gallery", type=int, default=200, help="generated gallery images")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "internlm-bench-xcomposer")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES,
                        help="the golden fixtures (XComposer tokenizer, test image); on the GPU machine a carried copy")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run the dry run with --model tiny --device cpu.")
    dtype = args.dtype or ("float32" if device == "cpu" else "float16")
    result = {"date": date.today().isoformat(), "model": args.model, "dtype": dtype, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "tokens": args.tokens}
    folder = args.workdir / f"xcomposer-{args.model}-random"
    write_dtype = torch.float32 if dtype == "float32" else torch.float16
    result["save_s"] = write_xcomposer_checkpoint(folder, DIMS[args.model], device, args.fixtures, write_dtype)
    result["roofline"] = {"bandwidth": read_bandwidth(device)}
    reset_peak(device)
    began = time.perf_counter()
    model = load_xcomposer(folder, device=device, dtype=dtype, progress=False, engine="fast")
    result["load_with_engine_s"] = time.perf_counter() - began
    read_bps, total = result["roofline"]["bandwidth"]["read"], weight_bytes(model.llm)
    result["roofline"].update(read_bandwidth_Bps=read_bps, weight_bytes=total, ceiling_tok_s=read_bps / total)
    result["engine"] = model.info.engine
    paths = {"old": old_path(model), "engine": model}
    print(json.dumps({k: result[k] for k in ("roofline", "engine", "load_with_engine_s")}), flush=True)

    image = args.fixtures / "xcomposer-test-image.png"
    embeds = model.embed(chat_segments("What is in the picture?", model.encode_image(image), None))
    result["prompt_positions"] = embeds.shape[1]
    result.update(decode_modes(paths, embeds, args.tokens, result["roofline"]["ceiling_tok_s"], device))
    print(json.dumps({m: {p: {k: v for k, v in r.items() if k != "output_ids"} if isinstance(r, dict) else r
                          for p, r in result[m].items()} for m in ("greedy", "beam5")}), flush=True)

    # The article: the stages' own settings with fixed lengths (random weights rarely stop early).
    pipeline.LOCATION_GENERATION = {**pipeline.LOCATION_GENERATION, "max_new_tokens": args.location_tokens}
    pipeline.CAPTION_GENERATION = {**pipeline.CAPTION_GENERATION, "max_new_tokens": args.caption_tokens}
    settings = replace(ComposeSettings(), max_output_tokens=args.article_tokens + 1, image_count=args.images)
    gallery_root = write_gallery(args.workdir / f"gallery-{args.gallery}", args.gallery)
    began = time.perf_counter()
    gallery = open_gallery(gallery_root, cache_dir=args.workdir / "gallery-cache", encoder=None)
    result["gallery"] = {"images": len(gallery), "index_s": time.perf_counter() - began, "method": gallery.method}
    title = "敦煌莫高窟的壁画与丝绸之路"
    article = {"settings": {"article_tokens": args.article_tokens, "images": args.images, "gallery": len(gallery),
                            "location_tokens": args.location_tokens, "caption_tokens": args.caption_tokens}}
    for path, each in paths.items():
        article[path] = article_run(each, gallery, title, settings, device)
        print(json.dumps({path: article[path]["seconds"]}), flush=True)
    article["equal"] = all(article["old"][k] == article["engine"][k] for k in ("text", "placements"))
    result["article"] = article
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_table(result)
    shutil.rmtree(folder, ignore_errors=True)
    if not (result["greedy"]["equal"] and result["beam5"]["equal"] and article["equal"]):
        sys.exit("the engine's outputs differ from the old Decoder's (see the JSON)")


if __name__ == "__main__":
    main()
