"""ChatModel behaviour beyond the fixtures: context budget, streaming text, sampling, the demo model."""

from __future__ import annotations

import threading

import pytest
import torch

from internlm_demo import ContextOverflowError, GenerationStats, load_chat_model
from internlm_demo.models.loading import DEMO_MODEL_ID, split_fused_wqkv
from internlm_demo.models.tokenizer import StreamingDetokenizer
from tests.conftest import FIXTURES_DIR


@pytest.fixture(scope="module")
def small_window_model():
    """InternLM-chat-20B tiny: a 64-token window and plain RoPE."""
    return load_chat_model(FIXTURES_DIR / "internlm-chat-20b-tiny", device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def v2_model():
    return load_chat_model(FIXTURES_DIR / "internlm2-chat-7b-tiny", device="cpu", dtype="float32", progress=False)


def test_budget_keeps_everything_that_fits(small_window_model):
    history = [("hi", "hello")]
    budget = small_window_model.fit_history("ok", history, max_new_tokens=8)
    assert budget.history == history and budget.dropped == []
    assert budget.prompt_tokens == small_window_model.count_tokens("ok", history)
    assert budget.prompt_tokens + budget.max_new_tokens <= budget.window == 64


def test_budget_drops_oldest_whole_turns(small_window_model):
    history = [(f"question number {i}", f"answer number {i}") for i in range(6)]
    budget = small_window_model.fit_history("and now?", history, max_new_tokens=16)
    assert budget.dropped == list(range(len(budget.dropped))) and budget.dropped, "oldest turns go first"
    assert budget.history == history[len(budget.dropped):]
    assert budget.prompt_tokens + 16 <= 64
    longer = small_window_model.count_tokens("and now?", history[len(budget.dropped) - 1:])
    assert longer + 16 > 64, "no turn was dropped that would have fitted"


def test_budget_shortens_reply_when_query_leaves_little_room(small_window_model):
    query = "word " * 20
    budget = small_window_model.fit_history(query, [], max_new_tokens=1000)
    assert budget.max_new_tokens == 64 - budget.prompt_tokens > 0


def test_query_that_alone_overflows_is_refused_with_numbers(small_window_model):
    with pytest.raises(ContextOverflowError) as caught:
        small_window_model.fit_history("word " * 200, [("a", "b")], max_new_tokens=8)
    assert "64 tokens" in str(caught.value) and "shorten" in str(caught.value)


def test_dynamic_ntk_window_is_scaled(v2_model):
    assert v2_model.context_window == 64 * 2


def test_system_prompt_default_and_none(v2_model):
    assert "InternLM (书生·浦语)" in v2_model.build_prompt("hi", [])
    assert v2_model.build_prompt("hi", [], meta_instruction="") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_streaming_never_yields_half_a_character(v2_model):
    tokenizer = v2_model.tokenizer
    ids = tokenizer.encode("emoji 😀 ok", add_special_tokens=False)
    assert len(ids) > 4, "the emoji is split into byte pieces by this tokenizer"
    detokenizer = StreamingDetokenizer(tokenizer)
    emitted = [text for text in map(detokenizer.push, ids) if text is not None]
    assert emitted[-1] == "emoji 😀 ok"
    assert all("\ufffd" not in text for text in emitted)
    assert all(later.startswith(earlier) for earlier, later in zip(emitted, emitted[1:]))


def test_sampling_is_reproducible_with_a_seed_and_varies_without(v2_model):
    first = v2_model.chat("hi", [], seed=7, max_new_tokens=10, temperature=1.0, top_p=1.0)[0]
    again = v2_model.chat("hi", [], seed=7, max_new_tokens=10, temperature=1.0, top_p=1.0)[0]
    others = {v2_model.chat("hi", [], seed=s, max_new_tokens=10, temperature=1.0, top_p=1.0)[0] for s in range(8, 12)}
    assert first == again
    assert len(others | {first}) > 1


def test_top_k_one_is_greedy(v2_model):
    greedy = v2_model.chat("hi", [], do_sample=False, max_new_tokens=8)[0]
    assert v2_model.chat("hi", [], do_sample=True, top_k=1, temperature=1.5, max_new_tokens=8, seed=1)[0] == greedy


def test_repetition_penalty_stops_greedy_repeats():
    model = load_chat_model(FIXTURES_DIR / "internlm-chat-7b-tiny", device="cpu", dtype="float32", progress=False)
    plain, penalised = GenerationStats(), GenerationStats()
    list(model.stream_chat("你好", [], stats=plain, do_sample=False, max_new_tokens=12))
    list(model.stream_chat("你好", [], stats=penalised, do_sample=False, max_new_tokens=12, repetition_penalty=50.0))
    assert len(set(plain.output_ids)) < len(plain.output_ids), "this fixture's greedy reply repeats itself"
    assert len(set(penalised.output_ids)) == len(penalised.output_ids)


def test_stop_event_ends_stream_and_reports_it(v2_model):
    stop = threading.Event()
    stats = GenerationStats()
    seen = []
    for text in v2_model.stream_chat("hi", [], stats=stats, stop=stop, do_sample=False, max_new_tokens=50):
        seen.append(text)
        if len(seen) == 3:
            stop.set()
    assert stats.finish_reason == "stopped" and stats.new_tokens < 50


def test_unknown_generation_argument_is_named(v2_model):
    with pytest.raises(TypeError, match="num_beams"):
        v2_model.chat("hi", [], num_beams=3)


def test_tiny_demo_model_is_generated_once_and_answers():
    model = load_chat_model(DEMO_MODEL_ID, progress=False)
    assert model.info.is_demo and model.info.family == "internlm" and not model.info.is_standin
    assert model.tokenizer.encode("<eoa>", add_special_tokens=False) == [model.tokenizer.token_id("<eoa>")]
    response, history = model.chat("你好", [], max_new_tokens=16, seed=0)
    assert history == [("你好", response)] and response
    assert load_chat_model(DEMO_MODEL_ID, progress=False).info.folder == model.info.folder, "generated once, then reused"


def test_demo_model_replies_end_and_stay_readable():
    model = load_chat_model(DEMO_MODEL_ID, progress=False)
    for seed in range(5):
        stats = GenerationStats()
        response = list(model.stream_chat("Hello 你好", [], stats=stats, seed=seed, temperature=0.7, top_p=0.8))[-1]
        assert stats.finish_reason == "stop", "the demo model says <eoa> well before 1,024 tokens"
        assert "\ufffd" not in response and "<eoh>" not in response


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (8, 1), (4, 4)])
def test_fused_wqkv_split_follows_the_group_layout(heads, kv_heads):
    """Fuse known q/k/v as the InternLM2 layout describes, per KV group [q × heads/kv_heads, k, v]; split back."""
    head_dim, width = 3, 5
    q = torch.randn(heads * head_dim, width)
    k, v = torch.randn(kv_heads * head_dim, width), torch.randn(kv_heads * head_dim, width)
    q_bias, k_bias, v_bias = torch.randn(heads * head_dim), torch.randn(kv_heads * head_dim), torch.randn(kv_heads * head_dim)
    group = heads // kv_heads

    def fuse(q, k, v):
        rows = []
        for g in range(kv_heads):
            rows += [q[(g * group + i) * head_dim:(g * group + i + 1) * head_dim] for i in range(group)]
            rows += [k[g * head_dim:(g + 1) * head_dim], v[g * head_dim:(g + 1) * head_dim]]
        return torch.cat(rows)

    for parts in ((q, k, v), (q_bias, k_bias, v_bias)):
        for got, expected in zip(split_fused_wqkv(fuse(*parts), heads, kv_heads), parts):
            assert torch.equal(got, expected)
