"""The engine (CPU path): batched equals sequential equals the simple path; same sampling rules and stopping."""

from __future__ import annotations

import threading

import pytest
import torch

from internlm_demo import GenerationParams, GenerationStats, load_chat_model
from internlm_demo.errors import ContextOverflowError
from internlm_demo.generation.engine import FastEngine
from internlm_demo.generation.sampling import filtered_probs, next_token, penalize_repeats, sample_filtered
from internlm_demo.generation.simple import generate_ids
from internlm_demo.generation.torch_kernels import exponential_noise
from internlm_demo.serving.chat_model import ChatModel
from tests.conftest import FIXTURES_DIR, reference

FIXTURES = ("internlm-chat-7b-tiny", "internlm-chat-20b-tiny", "internlm2-chat-7b-tiny")
GREEDY = GenerationParams(do_sample=False, max_new_tokens=12)


@pytest.fixture(scope="module")
def chats():
    """Each fixture loaded once with the simple path; engines are built on the same model objects."""
    return {name: load_chat_model(FIXTURES_DIR / name, device="cpu", progress=False, engine="simple") for name in FIXTURES}


@pytest.fixture(scope="module")
def engines(chats):
    return {name: FastEngine(chat.model, slots=3) for name, chat in chats.items()}  # fewer slots than cases


def plain(chat: ChatModel, prompt_ids, params=GREEDY, stop_ids=frozenset()):
    return list(generate_ids(chat.model, prompt_ids, params, set(stop_ids)))


def run_together(engine, jobs):
    """Start every (prompt ids, params, stop ids, stop after n tokens or None) at once; their outputs and stats."""
    outputs, stats = [[] for _ in jobs], [GenerationStats() for _ in jobs]
    streams = []
    for (ids, params, stop_ids, _), stat in zip(jobs, stats):
        event = threading.Event()
        streams.append((engine.generate(ids, params, set(stop_ids), stat, event), event))

    def consume(index):
        tokens, event = streams[index]
        for token in tokens:
            outputs[index].append(token)
            if jobs[index][3] is not None and len(outputs[index]) == jobs[index][3]:
                event.set()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outputs, stats


@pytest.mark.parametrize("name", FIXTURES)
def test_greedy_output_equals_simple_path_on_every_chat_case(name, chats, engines):
    for case in reference(name)["chat_cases"]:
        fast = list(engines[name].generate(case["input_ids"], GREEDY, set()))
        assert fast == plain(chats[name], case["input_ids"]), case["query"]
        # the original model's greedy ids: the fixture's own record, independent of either path
        assert fast == case["greedy"]["output_ids"][:len(fast)]


@pytest.mark.parametrize("name", FIXTURES)
def test_batched_requests_equal_each_request_alone(name, chats, engines):
    """All chat cases at once (more than the slots: some wait), different budgets, one stopped midway,
    one ended by a stop id: each gets exactly the tokens it gets alone on the simple path."""
    engine, chat = engines[name], chats[name]
    cases = reference(name)["chat_cases"]
    jobs = []
    for index, case in enumerate(cases):
        params = GenerationParams(do_sample=False, max_new_tokens=6 + 2 * index,
                                  repetition_penalty=1.3 if index == 2 else 1.0)
        jobs.append((case["input_ids"], params, (), None))
    alone = [plain(chat, ids, params) for ids, params, _, _ in jobs]
    stopped, ended = 1, 3
    jobs[stopped] = (*jobs[stopped][:3], 3)
    jobs[ended] = (jobs[ended][0], jobs[ended][1], {alone[ended][4]}, None)
    assert len(jobs) > engine.slots
    outputs, stats = run_together(engine, jobs)
    for index, (output, stat) in enumerate(zip(outputs, stats)):
        if index == stopped:
            assert stat.finish_reason == "stopped" and output == alone[index][:len(output)] and len(output) >= 3
        elif index == ended:
            assert output == alone[index][:4] and stat.finish_reason == "stop"
        else:
            assert output == alone[index] and stat.finish_reason == "length", index


def test_seeded_sampled_request_reproduces_itself_whatever_runs_beside_it(engines):
    engine = engines["internlm-chat-7b-tiny"]
    cases = reference("internlm-chat-7b-tiny")["chat_cases"]
    seeded = GenerationParams(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=11)
    alone = list(engine.generate(cases[0]["input_ids"], seeded, set()))
    neighbours = [(case["input_ids"], GenerationParams(do_sample=True, temperature=1.2, max_new_tokens=3 + i, seed=i),
                   (), None) for i, case in enumerate(cases[1:4])]
    outputs, _ = run_together(engine, [neighbours[0], (cases[0]["input_ids"], seeded, (), None), *neighbours[1:]])
    assert outputs[1] == alone
    other = GenerationParams(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=12)
    assert alone != list(engine.generate(cases[0]["input_ids"], other, set()))


def test_long_prompt_prefilled_in_chunks_gives_the_same_tokens(chats):
    name = "internlm2-chat-7b-tiny"  # 162 tokens on a 64-token window: dynamic NTK in every chunk
    engine = FastEngine(chats[name].model, prefill_chunk=40, idle_prefill_chunk=40)
    ids = reference(name)["chat_cases"][2]["input_ids"]
    assert list(engine.generate(ids, GREEDY, set())) == plain(chats[name], ids)


def test_layers_split_into_blocks_give_the_same_tokens(chats):
    """The num_gpus structure (blocks of layers, one KV cache each, the hidden state handed on), all on the CPU."""
    name = "internlm-chat-7b-tiny"
    layers = len(chats[name].model.model.layers)
    engine = FastEngine(chats[name].model, blocks=[("cpu", 1), ("cpu", layers - 1)])
    assert len(engine.blocks) == 2 and engine.state.devices == ("cpu", "cpu")
    jobs = [(case["input_ids"], GREEDY, (), None) for case in reference(name)["chat_cases"][:3]]
    outputs, _ = run_together(engine, jobs)
    assert outputs == [plain(chats[name], ids) for ids, *_ in jobs]


def test_fused_projections_are_views_and_memory_is_not_doubled():
    chat = load_chat_model(FIXTURES_DIR / "internlm2-chat-7b-tiny", device="cpu", progress=False, engine="simple")

    def storage_bytes(model):
        return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())

    before = storage_bytes(chat.model)
    engine = FastEngine(chat.model)
    attention, fused = chat.model.model.layers[0].self_attn, engine.blocks[0].layers[0].qkv
    rows = 0
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        assert torch.equal(proj.weight, fused[rows:rows + proj.weight.shape[0]])
        rows += proj.weight.shape[0]
    assert rows == fused.shape[0]
    assert storage_bytes(chat.model) == before
    again = FastEngine(chat.model)  # a second engine reuses the fused tensors instead of copying
    assert again.blocks[0].layers[0].gate_up.data_ptr() == engine.blocks[0].layers[0].gate_up.data_ptr()
    ids = reference("internlm2-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    assert list(again.generate(ids, GREEDY, set())) == plain(chat, ids)


def test_a_prompt_that_cannot_fit_a_slot_is_refused_and_the_engine_keeps_working(chats):
    chat = chats["internlm-chat-7b-tiny"]
    engine = FastEngine(chat.model, slots=2, capacity=64)
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][2]["input_ids"]  # 79 tokens
    with pytest.raises(ContextOverflowError, match="79 tokens.*63 positions"):
        engine.generate(ids, GREEDY, set())
    short = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    assert list(engine.generate(short, GREEDY, set())) == plain(chat, short)


@pytest.mark.parametrize("settings", [{"top_k": 1}, {"top_p": 1e-9}, {"top_k": 3, "top_p": 1e-9}, {"top_p": 0.0},
                                      {"temperature": 0.0}, {"temperature": 1e-7}])
def test_sampling_that_keeps_one_token_is_greedy(settings, chats, engines):
    """Edge values pick the most likely token on the engine and on the simple path alike."""
    ids = reference("internlm-chat-20b-tiny")["chat_cases"][1]["input_ids"]
    params = GenerationParams(**{"do_sample": True, "temperature": 1.3, "max_new_tokens": 12, "seed": 3, **settings})
    chat = chats["internlm-chat-20b-tiny"]
    fast = list(engines["internlm-chat-20b-tiny"].generate(ids, params, set()))
    assert fast == plain(chat, ids) == plain(chat, ids, params)


def test_top_k_past_the_vocabulary_is_off(chats, engines):
    name = "internlm-chat-7b-tiny"
    ids = reference(name)["chat_cases"][0]["input_ids"]
    vocab = chats[name].model.lm_head.weight.shape[0]
    off = GenerationParams(do_sample=True, temperature=0.9, max_new_tokens=8, seed=5)
    huge = GenerationParams(do_sample=True, temperature=0.9, max_new_tokens=8, seed=5, top_k=vocab + 10)
    assert list(engines[name].generate(ids, huge, set())) == list(engines[name].generate(ids, off, set()))
    assert plain(chats[name], ids, huge) == plain(chats[name], ids, off)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", -0.1, "temperature must be ≥ 0"), ("top_p", 1.5, "top_p must be between 0 and 1"),
    ("top_k", -1, "top_k must be a whole number ≥ 0"), ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
    ("repetition_penalty", -1.0, "repetition_penalty must be > 0"), ("max_new_tokens", -3, "max_new_tokens must be"),
    ("seed", "x", "seed must be a whole number"), ("temperature", float("nan"), "temperature must be ≥ 0"),
])
def test_generation_params_refuse_bad_values_with_a_clear_message(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**{field: value})


def test_repetition_penalty_changes_choices_as_the_simple_path_does(chats, engines):
    name = "internlm-chat-7b-tiny"
    ids = reference(name)["chat_cases"][2]["input_ids"]
    penalized = GenerationParams(do_sample=False, repetition_penalty=1.5, max_new_tokens=12)
    fast = list(engines[name].generate(ids, penalized, set()))
    assert fast == plain(chats[name], ids, penalized)
    assert fast != plain(chats[name], ids)  # the penalty does change the greedy choices here


def test_exponential_noise_is_a_function_of_seed_and_step_only():
    seed, step = torch.tensor([7, 7, 8]), torch.tensor([3, 4, 3])
    noise = exponential_noise(seed, step, 50_000)
    assert torch.equal(noise[0], exponential_noise(seed[:1], step[:1], 50_000)[0])
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert abs(float(noise.mean()) - 1.0) < 0.02 and abs(float(noise.std()) - 1.0) < 0.02  # Exp(1)
    assert float(noise.min()) > 0


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

    noise = exponential_noise(torch.arange(draws), torch.zeros(draws, dtype=torch.long), vocab)
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


def test_stop_event_and_closing_the_stream_free_the_slot(engines):
    engine = engines["internlm-chat-7b-tiny"]
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    stop, stats, received = threading.Event(), GenerationStats(), []
    for token in engine.generate(ids, GREEDY, set(), stats, stop):
        received.append(token)
        if len(received) == 3:
            stop.set()
    assert len(received) == 3 and stats.finish_reason == "stopped"
    abandoned = [engine.generate(ids, GREEDY, set()) for _ in range(engine.slots)]
    for tokens in abandoned:
        next(tokens)
        tokens.close()  # a reader that goes away ends its request
    # every slot is free again afterwards
    outputs, _ = run_together(engine, [(ids, GREEDY, (), None)] * engine.slots)
    assert all(len(output) == GREEDY.max_new_tokens for output in outputs)


def test_waiting_requests_see_their_place_in_line(chats):
    chat = chats["internlm-chat-7b-tiny"]
    engine = FastEngine(chat.model, slots=1)
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    running = engine.generate(ids, GenerationParams(do_sample=False, max_new_tokens=40), set())
    next(running)  # holds the only slot
    waiting = [GenerationStats() for _ in range(3)]
    stops = [threading.Event() for _ in waiting]
    streams = [engine.generate(ids, GREEDY, set(), stats, stop) for stats, stop in zip(waiting, stops)]
    assert [(s.waiting, s.queue_ahead) for s in waiting] == [(True, 0), (True, 1), (True, 2)]
    stops[1].set()  # leaves the line while waiting
    assert list(streams[1]) == [] and waiting[1].finish_reason == "stopped"
    assert [(s.waiting, s.queue_ahead) for s in (waiting[0], waiting[2])] == [(True, 0), (True, 1)]
    running.close()
    assert list(streams[0]) == plain(chat, ids) and list(streams[2]) == plain(chat, ids)
    assert not any(s.waiting for s in waiting)


def test_load_chat_model_engine_choice():
    folder = FIXTURES_DIR / "internlm2-chat-7b-tiny"
    fast = load_chat_model(folder, device="cpu", progress=False, engine="auto")
    assert isinstance(fast.engine, FastEngine)  # the CPU batches on the engine too
    assert fast.info.engine.startswith("batched engine: torch kernels, 8 slots")
    assert fast.engine_facts()["slots"] == fast.engine.slots == 8
    assert isinstance(load_chat_model(folder, device="cpu", progress=False, engine="fast").engine, FastEngine)
    simple = load_chat_model(folder, device="cpu", progress=False, engine="simple")
    assert simple.engine is None and simple.info.engine.startswith("simple path")
    with pytest.raises(ValueError, match="unknown engine"):
        load_chat_model(folder, device="cpu", progress=False, engine="turbo")


def engine_failing_once(chat, monkeypatch, call: int, message: str) -> FastEngine:
    """A two-slot engine whose ``call``-th choice of ids raises RuntimeError(``message``)."""
    engine = FastEngine(chat.model, slots=2)
    original, calls = engine.kernels.choose, []

    def failing_once(*args):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError(message)
        return original(*args)

    monkeypatch.setattr(engine.kernels, "choose", failing_once)
    return engine


def test_a_failing_step_fails_the_running_requests_and_the_engine_serves_the_next(chats, monkeypatch):
    name = "internlm-chat-7b-tiny"
    engine = engine_failing_once(chats[name], monkeypatch, 3, "simulated device fault")
    ids = reference(name)["chat_cases"][0]["input_ids"]
    with pytest.raises(RuntimeError, match="generation failed: simulated device fault"):
        list(engine.generate(ids, GREEDY, set()))
    assert list(engine.generate(ids, GREEDY, set())) == plain(chats[name], ids)


def test_a_failure_choosing_the_first_id_fails_that_request_alone(chats, monkeypatch):
    """The first id is chosen after the request left the prefill line: a failure there must end that
    request (not hang it) and leave the line of the others as it was."""
    name = "internlm-chat-7b-tiny"
    engine = engine_failing_once(chats[name], monkeypatch, 1, "simulated sampler fault")
    ids = reference(name)["chat_cases"][0]["input_ids"]
    failed, result = engine.generate(ids, GREEDY, set()), {}
    worker = threading.Thread(target=lambda: result.setdefault("error", pytest.raises(RuntimeError, list, failed)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the failed request never ended"
    assert "simulated sampler fault" in str(result["error"].value)
    assert list(engine.generate(ids, GREEDY, set())) == plain(chats[name], ids)


def test_decode_rate_measures_an_idle_engine(chats):
    engine = FastEngine(chats["internlm-chat-7b-tiny"].model, slots=4)
    assert engine.decode_rate(batch=3, steps=4, sample=True) > 0
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    assert list(engine.generate(ids, GREEDY, set())) == plain(chats["internlm-chat-7b-tiny"], ids)


def test_close_lets_running_requests_finish_then_refuses_new_ones(chats):
    chat = chats["internlm-chat-7b-tiny"]
    engine = FastEngine(chat.model, slots=2)
    ids = reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    running = engine.generate(ids, GREEDY, set())
    first = next(running)
    closer = threading.Thread(target=engine.close)
    closer.start()
    assert [first, *running] == plain(chat, ids)
    closer.join(timeout=30)
    assert not closer.is_alive() and engine.state.kv_cache_gib == 0
    with pytest.raises(RuntimeError, match="engine was closed"):
        engine.generate(ids, GREEDY, set())
