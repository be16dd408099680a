"""The Triton decode kernels against the torch reference, in Triton's interpreter (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from internlm_demo import GenerationParams, load_chat_model
from internlm_demo.generation.engine import FastEngine
from internlm_demo.generation.simple import generate_ids
from internlm_demo.generation.torch_kernels import TorchDecodeKernels
from tests.conftest import FIXTURES_DIR, REPO, reference


def check_triton_kernels_against_torch_reference() -> None:
    """Each Triton operation against TorchDecodeKernels on float16 data, three rows on slots 0..2 of four."""
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    generator = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).half()

    def relative(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    batch, slots, hidden, inter, head_dim = 3, 4, 64, 80, 16
    triton_ops, torch_ops = TritonDecodeKernels(), TorchDecodeKernels()
    x, norm = rand(batch, hidden), (1 + 0.1 * torch.randn(hidden, generator=generator)).half()
    positions = torch.tensor([260, 3, 127])
    for heads, kv_heads in ((4, 2), (4, 4)):  # grouped-query and multi-head attention
        rows = (heads + 2 * kv_heads) * head_dim
        w, b = rand(rows, hidden, scale=0.1), rand(rows, scale=0.1)
        assert relative(triton_ops.norm_linear(x, norm, 1e-6, w, b), torch_ops.norm_linear(x, norm, 1e-6, w, b)) < 2e-3
        angles = torch.rand(300, head_dim // 2, generator=generator) * 3
        cos, sin = torch.cat([angles.cos()] * 2, -1).half(), torch.cat([angles.sin()] * 2, -1).half()
        caches = [rand(slots, kv_heads, 300, head_dim) for _ in range(2)]
        copies = [c.clone() for c in caches]
        args = (x, norm, 1e-6, w, b, cos, sin)
        q_t = triton_ops.norm_linear_rope_store(*args, *caches, positions, heads, kv_heads)
        q_r = torch_ops.norm_linear_rope_store(*args, *copies, positions, heads, kv_heads)
        assert relative(q_t, q_r) < 2e-3
        for cache, copy in zip(caches, copies):
            for row, position in enumerate(positions.tolist()):
                assert relative(cache[row, :, position], copy[row, :, position]) < 2e-3  # the new token's k and v
                copy[row, :, position] = cache[row, :, position]
            assert torch.equal(cache, copy)  # nothing else written
        attended = triton_ops.attention(q_t, *caches, positions, head_dim ** -0.5)
        expected = torch_ops.attention(q_t.float(), caches[0].float(), caches[1].float(), positions, head_dim ** -0.5)
        assert relative(attended, expected) < 2e-3
    gate_up, gate_up_bias = rand(2 * inter, hidden, scale=0.1), rand(2 * inter, scale=0.1)
    assert relative(triton_ops.norm_gated_linear(x, norm, 1e-6, gate_up, gate_up_bias),
                    torch_ops.norm_gated_linear(x, norm, 1e-6, gate_up, gate_up_bias)) < 2e-3
    down, wide = rand(hidden, inter, scale=0.1), rand(batch, inter)  # 80 columns: not a multiple of a block
    summed_t, summed_r = x.clone(), x.clone()
    triton_ops.linear_add(wide, down, None, summed_t)
    torch_ops.linear_add(wide, down, None, summed_r)
    assert relative(summed_t, summed_r) < 2e-3


def check_triton_greedy_choice_against_torch_reference() -> None:
    """Greedy picks (with and without the repetition penalty) equal the torch ones and mark ``seen``."""
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    triton_ops, torch_ops = TritonDecodeKernels(), TorchDecodeKernels()
    generator = torch.Generator().manual_seed(3)
    batch, vocab = 3, 2000
    for case in range(8):
        logits = (3 * torch.randn(batch, vocab, generator=generator)).half()
        seen = torch.rand(batch, vocab, generator=generator) < 0.05
        settings = (torch.full((batch, 1), 1.3), torch.zeros(batch, 1), torch.zeros(batch, 1, dtype=torch.long),
                    torch.ones(batch, 1), torch.arange(batch), torch.zeros(batch, dtype=torch.long))
        outcomes = []
        for ops in (triton_ops, torch_ops):
            token, marks = torch.zeros(batch, dtype=torch.long), seen.clone()
            ops.choose(logits, marks, *settings, token, False, bool(case % 2))
            outcomes.append((token, marks))
        assert torch.equal(outcomes[0][0], outcomes[1][0]) and torch.equal(outcomes[0][1], outcomes[1][1])


def check_engine_on_triton_kernels() -> None:
    """The whole decode step on Triton kernels equals the simple path: GQA, dynamic NTK past the window."""
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    name = "internlm2-chat-7b-tiny"
    chat = load_chat_model(FIXTURES_DIR / name, device="cpu", progress=False, engine="simple")
    engine = FastEngine(chat.model, slots=2)
    engine.kernels = TritonDecodeKernels()
    ids = reference(name)["chat_cases"][2]["input_ids"]  # 162 tokens on a 64-token window
    params = GenerationParams(do_sample=False, max_new_tokens=5)
    assert list(engine.generate(ids, params, set())) == list(generate_ids(chat.model, ids, params, set()))


@pytest.mark.skip(reason="the Triton kernels are being rewritten for the batched DecodeKernels interface (issue 13)")
def test_triton_kernels_in_the_interpreter_match_torch_and_the_simple_path():
    """Triton decides at import whether to interpret, so the checks run in a fresh interpreter process."""
    pytest.importorskip("triton")
    code = ("import warnings; warnings.simplefilter('ignore', RuntimeWarning); "
            "from tests.test_triton_kernels import check_triton_kernels_against_torch_reference as a, "
            "check_triton_greedy_choice_against_torch_reference as b, check_engine_on_triton_kernels as c; "
            "a(); b(); c(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
