"""Beams as engine slots and prompts as embeddings: XComposer on the engine equals its transformers decoder."""

from __future__ import annotations

import threading

import pytest
import torch

from internlm_demo import GenerationParams, GenerationStats
from internlm_demo.generation.simple import generate_ids
from internlm_demo.xcomposer import load_xcomposer
from internlm_demo.xcomposer.decoding import Decoder, EngineDecoder, GenerationSettings
from internlm_demo.xcomposer.prompts import chat_segments
from tests.conftest import FIXTURES_DIR, reference

NAME = "internlm-xcomposer-7b-tiny"
REF = reference(NAME)
SETTINGS = {
    "greedy": {"num_beams": 1, "max_new_tokens": 12},
    "greedy_penalized": {"num_beams": 1, "max_new_tokens": 12, "repetition_penalty": 1.5},
    "beam5": {"num_beams": 5, "max_new_tokens": 16, "repetition_penalty": 1.5},
    "beam3_sampled": {"num_beams": 3, "max_new_tokens": 12, "do_sample": True, "repetition_penalty": 1.0, "seed": 4},
    "beam2_stop_free": {"num_beams": 2, "max_new_tokens": 10, "repetition_penalty": 1.0},
}


@pytest.fixture(scope="module")
def model():
    return load_xcomposer(FIXTURES_DIR / NAME, device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def prompts(model):
    """Each fixture chat case's prompt embeddings (image tokens spliced into the text)."""
    built = []
    for case in REF["chat_cases"]:
        image = model.encode_image(str(FIXTURES_DIR / case["image"])) if case["image"] else None
        built.append(model.embed(chat_segments(case["text"], image, None)))
    return built


def both_decoders(model, embeds, settings: dict):
    parsed = GenerationSettings.from_kwargs(settings, {})
    ids = {"bos_id": model.tokenizer.bos_id, "eos_id": model.tokenizer.eos_id, "stop_ids": model.stop_ids}
    return Decoder(model.llm, embeds, parsed, **ids), EngineDecoder(model.engine, embeds, parsed, **ids)


@pytest.mark.parametrize("kind", SETTINGS)
def test_engine_decoder_equals_the_transformers_decoder_on_every_fixture_prompt(model, prompts, kind):
    for embeds in prompts:
        reference_decoder, engine_decoder = both_decoders(model, embeds, SETTINGS[kind])
        reference_steps, engine_steps = list(reference_decoder.steps()), list(engine_decoder.steps())
        assert engine_steps == reference_steps  # what the pages stream
        assert engine_decoder.output_ids == reference_decoder.output_ids  # what generate returned
        assert engine_decoder.score == pytest.approx(reference_decoder.score) if reference_decoder.score else True


def test_a_beam_search_beside_chats_changes_nothing_for_either(model, prompts):
    """Five beam slots and two single sequences decode together; each equals its run alone."""
    engine = model.engine
    beam_settings = SETTINGS["beam5"]
    alone_beam = both_decoders(model, prompts[0], beam_settings)[0].run()
    prompt_ids = [[1, 333, 444, 555 + i] for i in range(2)]
    params = GenerationParams(do_sample=False, max_new_tokens=20)
    alone_chats = [list(generate_ids(model.llm, ids, params, set())) for ids in prompt_ids]
    results = {}

    def chat(index):
        results[index] = list(engine.generate(prompt_ids[index], params, set()))

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    beam = both_decoders(model, prompts[0], beam_settings)[1].run()
    for thread in threads:
        thread.join(timeout=60)
    assert beam == alone_beam
    assert [results[0], results[1]] == alone_chats


def test_stop_ends_a_beam_search_and_frees_its_slots(model, prompts):
    stop = threading.Event()
    parsed = GenerationSettings.from_kwargs({"num_beams": 5, "max_new_tokens": 40, "repetition_penalty": 1.0}, {})
    decoder = EngineDecoder(model.engine, prompts[1], parsed, model.tokenizer.bos_id, model.tokenizer.eos_id, (), stop)
    seen = []
    for ids in decoder.steps():
        seen.append(ids)
        if len(seen) == 3:
            stop.set()
    assert len(seen) == 3 and decoder.stats.finish_reason == "stopped" and decoder.score is None
    assert decoder.output_ids == seen[-1]
    reference_decoder, engine_decoder = both_decoders(model, prompts[1], SETTINGS["beam5"])
    assert engine_decoder.run() == reference_decoder.run()  # every slot is usable again


def test_prompt_embeddings_equal_their_token_ids(model):
    """A prompt given as the embeddings of its ids decodes as the ids themselves do."""
    ids = [1, 333, 444, 555, 666]
    params = GenerationParams(do_sample=False, max_new_tokens=8, repetition_penalty=1.2)
    embeds = model.llm.model.embed_tokens(torch.tensor([ids]))
    from_ids = list(model.engine.generate(ids, params, set()))
    from_embeds = list(model.engine.generate_from_embeddings(embeds, ids, params, set(), GenerationStats()))
    assert from_embeds == from_ids == list(generate_ids(model.llm, ids, params, set()))


def test_beams_on_layers_split_into_blocks(model, prompts):
    """The num_gpus structure with beams: each block reorders its own keys and values (all blocks on the CPU)."""
    from internlm_demo.generation.engine import FastEngine

    layers = len(model.llm.model.layers)
    split = FastEngine(model.llm, slots=6, blocks=[("cpu", 1), ("cpu", layers - 1)])
    parsed = GenerationSettings.from_kwargs(SETTINGS["beam5"], {})
    ids = {"bos_id": model.tokenizer.bos_id, "eos_id": model.tokenizer.eos_id, "stop_ids": model.stop_ids}
    expected = Decoder(model.llm, prompts[2], parsed, **ids).run()
    assert EngineDecoder(split, prompts[2], parsed, **ids).run() == expected


def test_beams_reorder_the_cache_a_layer_at_a_time(model, prompts, monkeypatch):
    """A reorder whose temporary would pass the limit copies the cache in parts of a few layers: same beams."""
    from internlm_demo.generation import engine as engine_module

    monkeypatch.setattr(engine_module, "REORDER_BYTES", 1)  # one layer per copy
    parsed = GenerationSettings.from_kwargs(SETTINGS["beam5"], {})
    ids = {"bos_id": model.tokenizer.bos_id, "eos_id": model.tokenizer.eos_id, "stop_ids": model.stop_ids}
    expected = Decoder(model.llm, prompts[2], parsed, **ids).run()
    assert EngineDecoder(model.engine, prompts[2], parsed, **ids).run() == expected
