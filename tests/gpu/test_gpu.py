"""The GPU paths the CPU suite never runs: skipped without CUDA; run by hand or by ``bench/`` on a GPU.

    python -m pytest -p no:cacheprovider tests/gpu -q

Triton kernels against the torch reference in float16 and bfloat16 (the small shapes of the CPU checks
and each family's real layer shapes, at 1, 8 and 16 rows); the engine's captured CUDA graphs giving the
fixtures' recorded greedy ids (on one GPU and, where there are two, on two); the forced fallback to torch ops when a Triton kernel fails to build.
"""

from __future__ import annotations

import threading

import pytest
import torch

from internlm_demo import GenerationParams, load_chat_model
from tests.conftest import FIXTURES_DIR, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = (torch.float16, torch.bfloat16)
# (hidden, heads, kv_heads, intermediate, vocab): InternLM-7B, InternLM2-7B, InternLM2-20B, InternLM3-8B
REAL_SHAPES = {"internlm-7b": (4096, 32, 32, 11008, 103168), "internlm2-7b": (4096, 32, 8, 14336, 92544),
               "internlm2-20b": (6144, 48, 8, 16384, 92544), "internlm3-8b": (4096, 32, 2, 10240, 128512)}
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_shape_checks_on_the_gpu(dtype):
    from tests.test_triton_kernels import run_checks

    with torch.device("cuda"):
        run_checks("cuda", (dtype,))


@pytest.mark.parametrize("family", sorted(REAL_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_at_real_shapes(family, dtype):
    """One layer of each family's real shapes: every operation at 1, 8 and 16 rows against the reference."""
    from internlm_demo.generation.torch_kernels import TorchDecodeKernels
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels
    from tests.test_triton_kernels import relative

    hidden, heads, kv_heads, inter, vocab = REAL_SHAPES[family]
    head_dim, capacity = hidden // heads, 1100
    triton_ops, torch_ops = TritonDecodeKernels(), TorchDecodeKernels()
    generator = torch.Generator("cuda").manual_seed(0)
    with torch.device("cuda"):
        def rand(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=generator)).to(dtype)

        norm = 1 + rand(hidden, scale=0.1)
        qkv, o = rand((heads + 2 * kv_heads) * head_dim, hidden, scale=0.02), rand(hidden, hidden, scale=0.02)
        gate_up, down = rand(2 * inter, hidden, scale=0.02), rand(hidden, inter, scale=0.02)
        lm_head = rand(vocab, hidden, scale=0.02)
        angles = torch.rand(capacity, head_dim // 2, generator=generator) * 3
        cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
        for batch in (1, 8, 16):
            x = rand(batch, hidden)
            caches = [rand(16, kv_heads, capacity, head_dim) for _ in range(2)]
            copies = [c.clone() for c in caches]
            positions = torch.randint(0, capacity, (batch,), generator=generator)
            args = (x, norm, 1e-5, qkv, None, cos, sin)
            q_t = triton_ops.norm_linear_rope_store(*args, *caches, positions, heads, kv_heads)
            q_r = torch_ops.norm_linear_rope_store(*args, *copies, positions, heads, kv_heads)
            assert relative(q_t, q_r) < TOLERANCE[dtype]
            rows = torch.arange(batch)
            assert relative(caches[0][rows, :, positions], copies[0][rows, :, positions]) < TOLERANCE[dtype]
            attended = triton_ops.attention(q_t, *caches, positions, head_dim ** -0.5)
            expected = torch_ops.attention(q_t.float(), caches[0].float(), caches[1].float(), positions,
                                           head_dim ** -0.5)
            assert relative(attended, expected) < TOLERANCE[dtype]
            summed_t, summed_r = x.clone(), x.clone()
            triton_ops.linear_add(attended, o, None, summed_t)
            torch_ops.linear_add(attended, o, None, summed_r)
            assert relative(summed_t, summed_r) < TOLERANCE[dtype]
            hidden_t = triton_ops.norm_gated_linear(x, norm, 1e-5, gate_up, None)
            assert relative(hidden_t, torch_ops.norm_gated_linear(x, norm, 1e-5, gate_up, None)) < TOLERANCE[dtype]
            triton_ops.linear_add(hidden_t, down, None, summed_t)
            torch_ops.linear_add(hidden_t, down, None, summed_r)
            assert relative(summed_t, summed_r) < TOLERANCE[dtype]
            assert relative(triton_ops.norm_linear(x, norm, 1e-5, lm_head, None),
                            torch_ops.norm_linear(x, norm, 1e-5, lm_head, None)) < TOLERANCE[dtype]


FIXTURES = ("internlm-chat-7b-tiny", "internlm2-chat-7b-tiny")


@pytest.mark.parametrize("name", FIXTURES)
def test_captured_graphs_give_the_fixtures_greedy_ids(name):
    """float32 on the GPU, Triton kernels in CUDA graphs: the original model's recorded greedy ids."""
    chat = load_chat_model(FIXTURES_DIR / name, device="cuda", dtype="float32", progress=False, engine="fast")
    engine = chat.engine
    assert engine.kernels.name == "triton" and engine._graphs
    for case in reference(name)["chat_cases"]:
        ids = list(engine.generate(case["input_ids"], GenerationParams(do_sample=False, max_new_tokens=12), set()))
        assert ids == case["greedy"]["output_ids"][:len(ids)], case["query"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("name", FIXTURES)
def test_two_gpus_give_the_fixtures_greedy_ids(name):
    """num_gpus=2: a block of layers per GPU, each captured on its own device, the ids read back from the
    second GPU; several requests at once, so tokens travel through the reader's ring while others decode."""
    chat = load_chat_model(FIXTURES_DIR / name, num_gpus=2, dtype="float32", progress=False, engine="fast")
    engine = chat.engine
    assert [block.device.index for block in engine.blocks] == [0, 1] and engine._graphs
    cases = reference(name)["chat_cases"]
    results = [None] * len(cases)

    def run(index):
        params = GenerationParams(do_sample=False, max_new_tokens=12)
        results[index] = list(engine.generate(cases[index]["input_ids"], params, set()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for case, ids in zip(cases, results):
        assert ids == case["greedy"]["output_ids"][:len(ids)], case["query"]


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_half_precision_rows_do_not_depend_on_their_neighbours(dtype):
    """In float16 and bfloat16 the graphs capture, and a seeded request draws the same ids beside five
    other requests (bucket 8) as beside two (bucket 4)."""
    chat = load_chat_model(FIXTURES_DIR / "internlm2-chat-7b-tiny", device="cuda", dtype=dtype, progress=False,
                           engine="fast")
    engine = chat.engine
    assert engine.kernels.name == "triton" and engine._graphs
    prompt = reference("internlm2-chat-7b-tiny")["chat_cases"][0]["input_ids"]
    params = GenerationParams(do_sample=True, temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.05,
                              max_new_tokens=24, seed=7)

    def beside(neighbours: int) -> list[int]:
        others = [engine.generate(prompt[:5 + i], GenerationParams(max_new_tokens=60, seed=i), set())
                  for i in range(neighbours)]
        ids = list(engine.generate(prompt, params, set()))
        for stream in others:
            list(stream)
        return ids

    first = beside(5)
    assert len(first) == 24 and beside(2) == first


def test_a_kernel_that_fails_to_build_falls_back_to_torch_ops(monkeypatch):
    from internlm_demo.generation import triton_kernels

    def broken(*args, **kwargs):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(triton_kernels.TritonDecodeKernels, "attention", broken)
    name = "internlm2-chat-7b-tiny"
    chat = load_chat_model(FIXTURES_DIR / name, device="cuda", dtype="float32", progress=False, engine="fast")
    assert chat.engine.kernels.name == "torch" and chat.engine._graphs
    case = reference(name)["chat_cases"][0]
    ids = list(chat.engine.generate(case["input_ids"], GenerationParams(do_sample=False, max_new_tokens=12), set()))
    assert ids == case["greedy"]["output_ids"][:len(ids)]
