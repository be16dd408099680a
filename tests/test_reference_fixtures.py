"""Every golden fixture reproduces what the original remote code produced (float32, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from internlm_demo import GenerationStats, load_chat_model
from internlm_demo.generation.simple import reset_dynamic_rope
from tests.conftest import FIXTURES_DIR

CHAT_FIXTURES = sorted(
    path.name.removesuffix(".reference.json")
    for path in FIXTURES_DIR.glob("*.reference.json")
    if json.loads(path.read_text(encoding="utf-8")).get("format", "").startswith(("internlm-v1", "internlm2"))
)
_MODELS: dict[str, object] = {}
_REFERENCES: dict[str, dict] = {}


def model_of(name: str):
    if name not in _MODELS:
        _MODELS[name] = load_chat_model(FIXTURES_DIR / name, device="cpu", dtype="float32", progress=False)
    return _MODELS[name]


def reference_of(name: str) -> dict:
    if name not in _REFERENCES:
        _REFERENCES[name] = json.loads((FIXTURES_DIR / f"{name}.reference.json").read_text(encoding="utf-8"))
    return _REFERENCES[name]


def cases(key: str):
    return [
        pytest.param(name, index, id=f"{name}-{case.get('name', index)}")
        for name in CHAT_FIXTURES
        for index, case in enumerate(reference_of(name).get(key, []))
    ]


def meta_instruction_of(case: dict) -> str | None:
    """None (the family default) unless the case overrides it."""
    return None if case.get("meta_instruction_is_chat_default", True) else case["meta_instruction"]


def last_logits(model, input_ids: list[int]) -> torch.Tensor:
    reset_dynamic_rope(model.model)  # as on the freshly loaded model the reference used
    with torch.inference_mode():
        return model.model(torch.tensor([input_ids])).logits[0, -1]


def test_fixtures_are_present():
    assert {"internlm-chat-7b-tiny", "internlm-chat-20b-tiny", "internlm2-chat-7b-tiny"} <= set(CHAT_FIXTURES)


@pytest.mark.parametrize(("name", "index"), cases("tokenizer_cases"))
def test_tokenizer_matches_original(name, index):
    case = reference_of(name)["tokenizer_cases"][index]
    tokenizer = model_of(name).tokenizer
    assert tokenizer.encode(case["text"]) == case["ids"]
    assert tokenizer.encode(case["text"], add_special_tokens=False) == case["ids_no_special"]
    assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special_tokens_true"]
    assert tokenizer.decode(case["ids"], skip_special_tokens=False) == case["decode_skip_special_tokens_false"]


@pytest.mark.parametrize(("name", "index"), cases("chat_cases"))
def test_prompt_and_input_ids_match(name, index):
    case = reference_of(name)["chat_cases"][index]
    model = model_of(name)
    prompt = model.build_prompt(case["query"], case["history"], meta_instruction_of(case))
    assert prompt == case["prompt"]
    assert model.tokenizer.encode(prompt) == case["input_ids"]


def assert_top10_matches(model, case):
    logits = last_logits(model, case["input_ids"])
    expected_ids = [token for token, _ in case["next_token_top10"]]
    assert torch.topk(logits, 10).indices.tolist() == expected_ids
    for token, value in case["next_token_top10"]:
        assert abs(logits[token].item() - value) <= 1e-4, (token, logits[token].item(), value)
    assert abs(logits.norm().item() - case["next_token_logits_l2"]) <= 1e-3


@pytest.mark.parametrize(("name", "index"), cases("chat_cases"))
def test_chat_prompt_logits_match(name, index):
    assert_top10_matches(model_of(name), reference_of(name)["chat_cases"][index])


@pytest.mark.parametrize(("name", "index"), cases("raw_forward_cases"))
def test_raw_forward_logits_match(name, index):
    case = reference_of(name)["raw_forward_cases"][index]
    model = model_of(name)
    assert model.tokenizer.encode(case["text"]) == case["input_ids"]
    assert_top10_matches(model, case)


@pytest.mark.parametrize(("name", "index"), cases("chat_cases"))
def test_greedy_chat_matches(name, index):
    case = reference_of(name)["chat_cases"][index]
    greedy = case["greedy"]
    kwargs = {k: v for k, v in greedy["chat_kwargs"].items() if k not in ("eos_token_id", "meta_instruction")}
    meta = greedy["chat_kwargs"].get("meta_instruction", meta_instruction_of(case))
    model = model_of(name)
    assert set(greedy["chat_kwargs"].get("eos_token_id", [])) <= model.stop_ids
    history_before = [tuple(turn) for turn in case["history"]]
    response, history = model.chat(case["query"], history_before, meta_instruction=meta, **kwargs)
    assert response == greedy["response"]
    assert [list(turn) for turn in history] == greedy["history"]
    assert history_before == [tuple(turn) for turn in case["history"]], "chat() must not mutate the history passed in"


@pytest.mark.parametrize(("name", "index"), cases("stream_cases"))
def test_stream_chat_matches(name, index):
    case = reference_of(name)["stream_cases"][index]
    kwargs = {k: v for k, v in case["stream_kwargs"].items() if k != "eos_token_id"}
    stats = GenerationStats()
    partials = list(model_of(name).stream_chat(case["query"], case["history"], stats=stats, **kwargs))
    expected = [text for text in dict.fromkeys(case["partial_responses"]) if text and not text.endswith("\ufffd")]
    assert partials == expected
    assert stats.output_ids == case["output_ids"]
    assert stats.finish_reason == "length"
