"""Prompt strings and decoding against the golden fixtures' originals, for every family that shares a format.

The fixtures hold what the original code produced: ``chat_cases`` (``build_inputs``), ``chat_template_cases``
(InternLM2's own ``chat_template``) and ``tokenizer_cases`` (the slow tokenizer's decodes).
"""

from __future__ import annotations

import pytest

from internlm_demo.agent.protocol import Departures, protocol_for
from internlm_demo.models.families import INTERNLM, INTERNLM2, INTERNLM3, family_for
from internlm_demo.models.loading import read_folder_tokenizer
from internlm_demo.models.tokenizer import StreamingDetokenizer
from internlm_demo.serving.chat_model import ChatModel
from tests.conftest import FIXTURES_DIR, reference

V1, V2 = "internlm-chat-7b-tiny", "internlm2-chat-7b-tiny"
_TOKENIZERS = {}


def tokenizer_of(name: str):
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = read_folder_tokenizer(FIXTURES_DIR / name)
    return _TOKENIZERS[name]


def prompt_model(name: str, family) -> ChatModel:
    """A ChatModel with no weights: prompts and stop words need only the tokenizer and the family."""
    return ChatModel(None, tokenizer_of(name), family, None)


def meta_of(case: dict) -> str | None:
    return None if case.get("meta_instruction_is_chat_default", True) else case["meta_instruction"]


@pytest.mark.parametrize("family", [INTERNLM2, INTERNLM3], ids=["internlm2", "internlm3"])
def test_chatml_families_render_internlm2_chat_template(family):
    """InternLM2 and InternLM3 share one format: what InternLM2's own chat_template renders (less BOS)."""
    model = prompt_model(V2, family)
    for case in reference(V2)["chat_template_cases"]:
        messages = case["messages"]
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        history = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
        meta = system[0] if system else ""
        assert "<s>" + model.build_prompt(turns[-1]["content"], history, meta) == case["rendered"]


@pytest.mark.parametrize("name", [V1, V2])
def test_prompts_equal_build_inputs_with_history_given_as_none_or_empty(name):
    family = INTERNLM if name == V1 else INTERNLM2
    model = prompt_model(name, family)
    for case in reference(name)["chat_cases"]:
        if case["history"]:
            continue
        assert model.build_prompt(case["query"], None, meta_of(case)) == case["prompt"]
        assert model.build_prompt(case["query"], [], meta_of(case)) == case["prompt"]


def test_v1_has_no_system_turn_whatever_the_meta_instruction():
    model = prompt_model(V1, INTERNLM)
    assert model.build_prompt("Hi", None, "Be brief.") == "<|User|>:Hi<eoh>\n<|Bot|>:"


def test_empty_meta_instruction_drops_the_system_turn():
    model = prompt_model(V2, INTERNLM2)
    assert model.build_prompt("Hello", [("a", "b")], "") == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("name", "text", "expected"), [
    (V1, "Sure.<eoa>\n<|User|>:more", "Sure."),
    (V1, "no stop word", "no stop word"),
    (V2, "first<|im_end|>second<|im_end|>", "first"),
    (V2, "<|im_end|>after", ""),
])
def test_reply_is_cut_at_the_first_stop_word(name, text, expected):
    model = prompt_model(name, INTERNLM if name == V1 else INTERNLM2)
    assert model._cut_at_stop_word(text) == expected


def test_stop_ids_are_the_families_end_markers():
    assert prompt_model(V1, INTERNLM).stop_ids == {2, reference(V1)["special_tokens"]["<eoa>"]}
    assert prompt_model(V2, INTERNLM2).stop_ids == set(reference(V2)["special_tokens"]["chat_eos_token_id"])


@pytest.mark.parametrize(("model_type", "special", "expected"), [
    ("internlm", set(), INTERNLM), ("internlm2", set(), INTERNLM2), ("internlm3", set(), INTERNLM3),
    ("mistral", {"<|im_start|>"}, None),
])
def test_family_for_model_types(model_type, special, expected):
    assert family_for(model_type, special) == expected


def test_converted_llama_folders_take_their_prompts_from_the_tokenizer():
    chatml = family_for("llama", {"<s>", "<|im_start|>", "<|im_end|>"})
    v1 = family_for("llama", {"<s>", "</s>"})
    assert chatml.user_turn == INTERNLM2.user_turn and chatml.stop_words == ("<|im_end|>",)
    assert v1.user_turn == INTERNLM.user_turn and v1.stop_words == ("<eoa>",)
    assert chatml.tensor_renames == () and chatml.fused_qkv is None
    case = reference(V2)["chat_cases"][2]
    assert prompt_model(V2, chatml).build_prompt(case["query"], case["history"], meta_of(case)) == case["prompt"]


@pytest.mark.parametrize("name", [V1, V2])
def test_streaming_detokenizer_yields_growing_whole_characters(name):
    """Pushed one id at a time, the text grows to the original decode and never ends in half a character."""
    tokenizer = tokenizer_of(name)
    case = next(c for c in reference(name)["tokenizer_cases"] if c["text"].startswith("emoji"))
    stream = StreamingDetokenizer(tokenizer)
    texts = [stream.push(token) for token in case["ids"]]
    shown = [text for text in texts if text is not None]
    assert shown[-1] == case["decode_skip_special_tokens_true"]
    assert all("\ufffd" not in text and case["decode_skip_special_tokens_true"].startswith(text) for text in shown)
    assert all(len(a) < len(b) for a, b in zip(shown, shown[1:]))
    assert texts[0] is None  # BOS alone decodes to nothing new
    byte_pieces = [i for i, token in enumerate(case["tokens"]) if token.startswith("<0x")]
    if byte_pieces:  # the v2 tokenizer spells each emoji in four bytes: only the fourth completes it
        assert [texts[i] is None for i in byte_pieces] == [True, True, True, False] * 2


def test_decode_spacing_around_special_tokens_matches_the_original():
    """The original puts a space before a special token that follows text, none between two specials."""
    tokenizer = tokenizer_of(V2)
    case = next(c for c in reference(V2)["tokenizer_cases"] if c["text"].startswith("<|action_start|>"))
    assert tokenizer.decode(case["ids"]) == case["decode_skip_special_tokens_false"]
    assert tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decode_skip_special_tokens_true"]
    # without BOS the text starts at a special token, which is spaced as the original spaces <s> (" <s>...")
    assert tokenizer.decode(case["ids"][1:]) == " " + case["decode_skip_special_tokens_false"].removeprefix(" <s>")


def test_streaming_shows_no_new_text_for_special_tokens():
    """A special id decodes to nothing new (skipped), so the stream reports no change for it."""
    tokenizer = tokenizer_of(V2)
    case = next(c for c in reference(V2)["tokenizer_cases"] if c["text"].startswith("<|im_start|>user"))
    specials = set(reference(V2)["special_tokens"]["all_special_ids"])
    stream = StreamingDetokenizer(tokenizer)
    texts = [stream.push(token) for token in case["ids"]]
    assert [text is None for text in texts] == [token in specials for token in case["ids"]]
    assert [text for text in texts if text is not None][-1] == case["decode_skip_special_tokens_true"]


@pytest.mark.parametrize("departures", [Departures(), Departures.none()], ids=["ours", "lagent"])
@pytest.mark.parametrize(("name", "family", "markers"), [
    (V1, INTERNLM, ["<eoa>"]), (V2, INTERNLM2, ["<|im_end|>", "<|action_end|>"]),
])
def test_agent_stop_words_are_the_end_tokens_the_model_emits(name, family, markers, departures):
    """The agent's token stop words are the end-of-turn tokens of the original tokenizer (fixture ids)."""
    special = reference(name)["special_tokens"]
    ids = special.get("ids", special)
    stop_words = protocol_for(family, departures=departures).stop_words
    tokens = [word for word in stop_words if not word.startswith("\n")]
    assert tokens == markers
    assert [tokenizer_of(name).token_id(word) for word in tokens] == [ids[marker] for marker in markers]
