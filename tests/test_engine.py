"""The fast engine (CPU path): same greedy tokens as the simple path, same sampling rules, same stopping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from internlm_demo import GenerationParams, GenerationStats, load_chat_model
from internlm_demo.generation.engine import FastEngine, FifoLock
from internlm_demo.generation.sampling import filtered_probs, next_token, penalize_repeats, sample_filtered
from internlm_demo.generation.simple import generate_ids
from internlm_demo.serving.chat_model import ChatModel
from tests.conftest import FIXTURES_DIR, REPO, reference

FIXTURES = ("internlm-chat-7b-tiny", "internlm-chat-20b-tiny", "internlm2-chat-7b-tiny")
GREEDY = GenerationParams(do_sample=False, max_new_tokens=12)


@pytest.fixture(scope="module")
def chats():
    """Each fixture loaded once with the simple path; engines are built on the same model objects."""
    return {name: load_chat_model(FIXTURES_DIR / name, device="cpu", progress=False, engine="simple") for name in FIXTURES}


@pytest.fixture(scope="module")
def engines(chats):
    return {name: FastEngine(chat.model) for name, chat in chats.items()}


def plain(chat: ChatModel, prompt_ids, params=GREEDY, stop_ids=frozenset()):
    return list(generate_ids(chat.model, prompt_ids, params, set(stop_ids)))


@pytest.mark.parametrize("name", FIXTURES)
def test_greedy_output_equals_simple_path_on_every_chat_case(name, chats, engines):
    for case in reference(name)["chat_cases"]:
        fast = list(engines[name].generate(case["input_ids"], GREEDY, set()))
        assert fast == plain(chats[name], case["input_ids"]), case["query"]
        # the original model's greedy ids: the fixture's own record, independent of either path
        assert fast == case["greedy"]["output_ids"][:len(fast)]


def test_fused_projections_are_views_and_memory_is_not_doubled():
    chat = load_chat_model(FIXTURES_DIR / "internlm2-chat-7b-tiny", device="cpu", progress=False, engine="simple")

    def storage_bytes(model):
        return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())

    before = storage_bytes(chat.model)
    engine = FastEngine(chat.model)
    attention, fused = chat.model.model.layers[0].self_attn, engine.layers[0].qkv
    rows = 0
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        assert torch.equal(proj.weight, fused[rows:rows + proj.weight.shape[0]])
        rows += proj.weight.shape[0]
    assert rows == fused.shape[0]
    assert storage_bytes(chat.model) == before
    again = FastEngine(chat.model)  # a second engine reuses the fused tensors instead of copying
    assert again.layers[0].gate_up.data_ptr() == engine.layers[0].gate_up.data_ptr()
    ids = reference("internlm2-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    assert list(again.generate(ids, GREEDY, set())) == plain(chat, ids)


def test_cache_grows_past_its_initial_capacity(chats):
    chat = chats["internlm-chat-7b-tiny"]
    engine = FastEngine(chat.model, initial_capacity=16)
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][2]["input_ids"]  # 79 tokens
    assert list(engine.generate(ids, GREEDY, set())) == plain(chat, ids)
    assert engine.capacity >= len(ids) + GREEDY.max_new_tokens


@pytest.mark.parametrize("settings", [{"top_k": 1}, {"top_p": 1e-9}, {"top_k": 3, "top_p": 1e-9}])
def test_sampling_that_keeps_one_token_is_greedy(settings, chats, engines):
    ids = reference("internlm-chat-20b-tiny")["chat_cases"][1]["input_ids"]
    params = GenerationParams(do_sample=True, temperature=1.3, max_new_tokens=12, seed=3, **settings)
    assert list(engines["internlm-chat-20b-tiny"].generate(ids, params, set())) == plain(chats["internlm-chat-20b-tiny"], ids)


def test_repetition_penalty_changes_choices_as_the_simple_path_does(chats, engines):
    name = "internlm-chat-7b-tiny"
    ids = reference(name)["chat_cases"][2]["input_ids"]
    penalized = GenerationParams(do_sample=False, repetition_penalty=1.5, max_new_tokens=12)
    fast = list(engines[name].generate(ids, penalized, set()))
    assert fast == plain(chats[name], ids, penalized)
    assert fast != plain(chats[name], ids)  # the penalty does change the greedy choices here


def test_seeded_sampling_is_reproducible(engines):
    engine = engines["internlm-chat-7b-tiny"]
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    params = GenerationParams(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=11)
    first = list(engine.generate(ids, params, set()))
    assert first == list(engine.generate(ids, params, set()))
    other = GenerationParams(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=12)
    assert first != list(engine.generate(ids, other, set()))


def test_device_sampling_follows_next_token_distribution():
    """Same kept set and probabilities as generation.next_token: temperature, top-k, top-p, penalty."""
    vocab, draws = 12, 4000
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(6)) * 0.5
    seen_ids = torch.tensor([1, 4, 4, 7])
    params = GenerationParams(do_sample=True, temperature=0.7, top_k=6, top_p=0.8, repetition_penalty=1.3)
    seen = torch.zeros(1, vocab, dtype=torch.bool)
    seen[0, seen_ids] = True
    scores = penalize_repeats(logits[None].float(), seen, torch.tensor([[1.3]]))
    settings = (torch.tensor([[0.7]]), torch.tensor([[6]]), torch.tensor([[0.8]]))
    probs, order = filtered_probs(scores, *settings)
    engine_probs = torch.zeros(vocab).scatter(0, order[0], probs[0])
    kept = set(torch.nonzero(engine_probs).flatten().tolist())
    assert 1 < len(kept) < 6  # both filters cut something and leave a choice

    generator = torch.Generator().manual_seed(1)
    reference_draws = torch.tensor([next_token(logits, seen_ids, params, generator) for _ in range(draws)])
    assert set(reference_draws.tolist()) == kept
    reference_freq = torch.bincount(reference_draws, minlength=vocab) / draws
    assert (reference_freq - engine_probs).abs().max() < 0.035

    noise = torch.empty(draws, vocab).exponential_(generator=torch.Generator().manual_seed(2))
    engine_draws = sample_filtered(scores.expand(draws, -1), *settings, noise)
    engine_freq = torch.bincount(engine_draws, minlength=vocab) / draws
    assert (engine_freq - engine_probs).abs().max() < 0.035


def test_stop_id_ends_generation_and_is_not_yielded(chats, engines):
    name = "internlm-chat-7b-tiny"
    ids = reference(name)["chat_cases"][3]["input_ids"]
    expected = plain(chats[name], ids)
    stop_id = expected[4]
    stats = GenerationStats()
    fast = list(engines[name].generate(ids, GREEDY, {stop_id}, stats))
    assert fast == expected[:expected.index(stop_id)]
    assert stats.finish_reason == "stop" and stats.new_tokens == len(fast)


def test_stream_chat_on_the_engine_stops_at_the_family_stop_ids(chats, engines):
    name = "internlm-chat-7b-tiny"
    simple = chats[name]
    case = reference(name)["chat_cases"][0]
    expected = plain(simple, case["input_ids"])
    stop_id = expected[3]
    fast_chat = ChatModel(simple.model, simple.tokenizer, simple.family, simple.info,
                          extra_stop_ids={stop_id}, engine=engines[name])
    simple_chat = ChatModel(simple.model, simple.tokenizer, simple.family, simple.info, extra_stop_ids={stop_id})
    kwargs = {"do_sample": False, "max_new_tokens": 12}
    fast_stats, simple_stats = GenerationStats(), GenerationStats()
    fast_text = list(fast_chat.stream_chat(case["query"], case["history"], stats=fast_stats, **kwargs))
    simple_text = list(simple_chat.stream_chat(case["query"], case["history"], stats=simple_stats, **kwargs))
    assert fast_text == simple_text
    assert fast_stats.output_ids == expected[:expected.index(stop_id)] == simple_stats.output_ids
    assert fast_stats.finish_reason == simple_stats.finish_reason == "stop"


def test_stop_event_ends_generation(engines):
    engine = engines["internlm-chat-7b-tiny"]
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    stop, stats, received = threading.Event(), GenerationStats(), []
    for token in engine.generate(ids, GREEDY, set(), stats, stop):
        received.append(token)
        if len(received) == 3:
            stop.set()
    assert len(received) == 3 and stats.finish_reason == "stopped"
    # the engine is free again afterwards
    assert len(list(engine.generate(ids, GREEDY, set()))) == GREEDY.max_new_tokens


def test_load_chat_model_engine_choice():
    folder = FIXTURES_DIR / "internlm2-chat-7b-tiny"
    assert isinstance(load_chat_model(folder, device="cpu", progress=False, engine="fast").engine, FastEngine)
    assert load_chat_model(folder, device="cpu", progress=False, engine="auto").engine is None  # CPU: simple path
    assert load_chat_model(folder, device="cpu", progress=False, engine="simple").engine is None
    with pytest.raises(ValueError, match="unknown engine"):
        load_chat_model(folder, device="cpu", progress=False, engine="turbo")


def test_fifo_lock_serves_waiters_in_arrival_order():
    lock, served = FifoLock(), []

    def chat(index):
        with lock:
            served.append(index)
            time.sleep(0.01)

    lock.__enter__()  # held while the waiters queue up, one by one
    threads = []
    for index in range(6):
        threads.append(threading.Thread(target=chat, args=(index,)))
        threads[-1].start()
        time.sleep(0.02)
    lock.__exit__(None, None, None)
    for thread in threads:
        thread.join()
    assert served == list(range(6))


def check_triton_kernels_against_torch_reference() -> None:
    """Each Triton operation against TorchDecodeKernels on float16 data (run under TRITON_INTERPRET=1)."""
    from internlm_demo.generation.engine import TorchDecodeKernels
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    generator = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).half()

    def relative(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    hidden, inter, head_dim = 64, 80, 16
    # (BLOCK_N, BLOCK_K, warps, unroll): unrolled and looped K, rows and columns that do not divide evenly
    small = {(8 * head_dim, hidden): (16, 32, 4, 1), (2 * inter, hidden): (32, 32, 4, 0),
             (hidden, inter): (16, 32, 4, 0), (12 * head_dim, hidden): (16, 32, 4, 0)}
    triton_ops, torch_ops = TritonDecodeKernels(small), TorchDecodeKernels()
    x, norm = rand(1, hidden), (1 + 0.1 * torch.randn(hidden, generator=generator)).half()
    for heads, kv_heads in ((4, 2), (4, 4)):  # grouped-query and multi-head attention
        rows = (heads + 2 * kv_heads) * head_dim
        w, b = rand(rows, hidden, scale=0.1), rand(rows, scale=0.1)
        assert relative(triton_ops.norm_linear(x, norm, 1e-6, w, b), torch_ops.norm_linear(x, norm, 1e-6, w, b)) < 2e-3
        angles = torch.rand(300, head_dim // 2, generator=generator) * 3
        cos, sin = torch.cat([angles.cos()] * 2, -1).half(), torch.cat([angles.sin()] * 2, -1).half()
        caches = [rand(1, kv_heads, 300, head_dim) for _ in range(2)]
        copies = [c.clone() for c in caches]
        position = torch.tensor([260])  # three splits of 128 positions, two of them in use
        args = (x, norm, 1e-6, w, b, cos, sin)
        q_t = triton_ops.norm_linear_rope_store(*args, *caches, position, heads, kv_heads)
        q_r = torch_ops.norm_linear_rope_store(*args, *copies, position, heads, kv_heads)
        assert relative(q_t, q_r) < 2e-3
        for cache, copy in zip(caches, copies):
            assert relative(cache[0, :, 260], copy[0, :, 260]) < 2e-3  # the new token's k and v
            assert torch.equal(cache[0, :, :260], copy[0, :, :260])  # nothing else written
        attended = triton_ops.attention(q_t, *caches, position, head_dim ** -0.5)
        expected = torch_ops.attention(q_t.float(), caches[0].float(), caches[1].float(), position, head_dim ** -0.5)
        assert relative(attended, expected) < 2e-3
    gate_up, gate_up_bias = rand(2 * inter, hidden, scale=0.1), rand(2 * inter, scale=0.1)
    assert relative(triton_ops.norm_gated_linear(x, norm, 1e-6, gate_up, gate_up_bias),
                    torch_ops.norm_gated_linear(x, norm, 1e-6, gate_up, gate_up_bias)) < 2e-3
    down, wide = rand(hidden, inter, scale=0.1), rand(1, inter)  # 80 columns: not a multiple of the block
    summed_t, summed_r = x.clone(), x.clone()
    triton_ops.linear_add(wide, down, None, summed_t)
    torch_ops.linear_add(wide, down, None, summed_r)
    assert relative(summed_t, summed_r) < 2e-3


def check_triton_sampler_against_torch_reference() -> None:
    """Greedy and sampled choices of the Triton sampler equal the torch ones for the same Exp(1) noise."""
    from internlm_demo.generation import triton_kernels as decode_kernels
    from internlm_demo.generation.engine import TorchDecodeKernels

    decode_kernels.SAMPLER_BLOCK = 512  # several chunks per pass over a small vocabulary
    triton_ops, torch_ops = decode_kernels.TritonDecodeKernels(), TorchDecodeKernels()
    generator = torch.Generator().manual_seed(3)
    vocab, disagreements = 2000, 0
    settings = [(0, 1.0, 1.0), (5, 0.9, 0.7), (50, 0.5, 1.3), (0, 0.8, 0.8), (0, 1e-9, 1.0), (3, 0.95, 2.0)]
    for case in range(24):
        logits = (3 * torch.randn(1, vocab, generator=generator)).half()
        seen = torch.rand(1, vocab, generator=generator) < 0.05
        noise = torch.empty(1, vocab).exponential_(generator=generator)
        top_k, top_p, temperature = settings[case % len(settings)]
        params = (torch.tensor([[1.3 if case % 2 else 1.0]]), torch.tensor([[temperature]]),
                  torch.tensor([[top_k]]), torch.tensor([[top_p]]), noise)
        for sample in (False, True):
            outcomes = []
            for ops in (triton_ops, torch_ops):
                token, marks = torch.zeros(1, dtype=torch.long), seen.clone()
                ops.choose(logits, marks, *params, token, sample, bool(case % 2))
                outcomes.append((int(token), marks))
            (a, marks_a), (b, _) = outcomes
            assert sample or a == b
            disagreements += a != b
            assert marks_a[0, a] and torch.equal(marks_a, seen | marks_a) and int((marks_a ^ seen).sum()) <= 1
    assert disagreements <= 1  # a draw may differ only where rounding moves a top-p boundary


def check_engine_on_triton_kernels() -> None:
    """The whole decode step on Triton kernels equals the simple path: GQA, dynamic NTK past the window."""
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    name = "internlm2-chat-7b-tiny"
    chat = load_chat_model(FIXTURES_DIR / name, device="cpu", progress=False, engine="simple")
    engine = FastEngine(chat.model)
    layer = engine.layers[0]
    # large blocks: the interpreter runs each program in numpy, so fewer programs run faster
    blocks = {tuple(t.shape): (128, 128, 4, 1) for t in (layer.qkv, layer.o, layer.gate_up, layer.down)}
    blocks[tuple(engine.lm_head.shape)] = (8192, 64, 4, 1)
    engine.kernels = TritonDecodeKernels(blocks)
    ids = reference(name)["chat_cases"][2]["input_ids"]  # 162 tokens on a 64-token window
    params = GenerationParams(do_sample=False, max_new_tokens=5)
    assert list(engine.generate(ids, params, set())) == plain(chat, ids, params)


def test_triton_kernels_in_the_interpreter_match_torch_and_the_simple_path():
    """Triton decides at import whether to interpret, so the checks run in a fresh interpreter process."""
    pytest.importorskip("triton")
    code = ("import warnings; warnings.simplefilter('ignore', RuntimeWarning); "
            "from tests.test_engine import check_triton_kernels_against_torch_reference as a, "
            "check_triton_sampler_against_torch_reference as b, check_engine_on_triton_kernels as c; "
            "a(); b(); c(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
