"""The Triton decode kernels against the torch reference, in Triton's interpreter on the CPU.

Batch 1 runs the matrix-vector kernels, two rows or more the tensor-core kernel: both are checked at 1,
3, 16 and 18 rows (18: two blocks of rows), with multi-head and grouped-query attention (4 and 16 query
heads per KV head), rows at different positions, and the sampler's per-row draws, which use the
reference's own noise. In float16 only: Triton 3.6's interpreter truncates float32 → bfloat16 casts and
its bfloat16 ``tl.dot`` returns garbage, so bfloat16 is checked on the GPU (tests/gpu).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

HIDDEN, INTER, HEAD_DIM, CAPACITY = 64, 80, 16, 300
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def kernels(gemv_for_one_row: bool = True, split_k: int = 1):
    """(Triton, torch) kernels; the Triton block shapes suit these small sizes (K not a block multiple);
    ``split_k``: the batched kernels sum K in that many parts (the q/k/v + RoPE kernel never splits)."""
    from internlm_demo.generation.torch_kernels import TorchDecodeKernels
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels

    shapes = [(rows * HEAD_DIM, HIDDEN) for rows in (12, 12 + 4, 18)] + [(2 * INTER, HIDDEN), (HIDDEN, INTER)]
    gemv = {shape: (16, 32, 4, index % 2) for index, shape in enumerate(shapes)}
    rows = {shape: (16, 32, 4, 2, split_k) for shape in shapes}
    return TritonDecodeKernels(gemv, rows, gemv_for_one_row), TorchDecodeKernels()


def check_linear_kernels(dtype, device="cpu", split_k: int = 1) -> None:
    """norm_linear, norm_gated_linear and linear_add at 1, 3, 16 and 18 rows."""
    triton_ops, torch_ops = kernels(split_k=split_k)
    generator = torch.Generator(device).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(dtype)

    norm = (1 + 0.1 * torch.randn(HIDDEN, generator=generator)).to(dtype)
    w, b = rand(12 * HEAD_DIM, HIDDEN, scale=0.1), rand(12 * HEAD_DIM, scale=0.1)
    gate_up, gate_up_bias = rand(2 * INTER, HIDDEN, scale=0.1), rand(2 * INTER, scale=0.1)
    down = rand(HIDDEN, INTER, scale=0.1)
    for batch in (1, 3, 16, 18):
        x, wide = rand(batch, HIDDEN), rand(batch, INTER)  # 80 columns: not a multiple of the block
        assert relative(triton_ops.norm_linear(x, norm, 1e-6, w, b), torch_ops.norm_linear(x, norm, 1e-6, w, b)) < TOLERANCE[dtype]
        assert relative(triton_ops.norm_gated_linear(x, norm, 1e-6, gate_up, gate_up_bias),
                        torch_ops.norm_gated_linear(x, norm, 1e-6, gate_up, gate_up_bias)) < TOLERANCE[dtype]
        summed_t, summed_r = x.clone(), x.clone()
        triton_ops.linear_add(wide, down, None, summed_t)
        torch_ops.linear_add(wide, down, None, summed_r)
        assert relative(summed_t, summed_r) < TOLERANCE[dtype]


def check_rows_do_not_depend_on_the_batch(device="cpu", split_k: int = 1) -> None:
    """Rows 0-1 come out bit for bit the same in batches of 2, 5 and 16; rows 16-17 of a batch of 18
    equal the same two rows run as a batch of 2; with batch 1 on the batched kernel, row 0 alone too."""
    triton_ops, _ = kernels(split_k=split_k)
    one_row_batched, _ = kernels(gemv_for_one_row=False, split_k=split_k)
    generator = torch.Generator(device).manual_seed(1)
    x = torch.randn(18, HIDDEN, generator=generator).half()
    norm = (1 + 0.1 * torch.randn(HIDDEN, generator=generator)).half()
    gate_up = (0.1 * torch.randn(2 * INTER, HIDDEN, generator=generator)).half()
    down = (0.1 * torch.randn(HIDDEN, INTER, generator=generator)).half()

    def step(rows):
        hidden = triton_ops.norm_gated_linear(rows, norm, 1e-6, gate_up, None)
        out = rows.clone()
        triton_ops.linear_add(hidden, down, None, out)
        return out

    pair = step(x[:2])
    for batch in (5, 16):
        assert torch.equal(step(x[:batch])[:2], pair)
    assert torch.equal(step(x)[16:], step(x[16:]))
    triton_ops = one_row_batched
    assert torch.equal(step(x[:1]), pair[:1])


def check_rope_store_and_attention(dtype, device="cpu") -> None:
    """q/k/v with RoPE and the cache store per row and slot, then attention over each row's own length."""
    triton_ops, torch_ops = kernels()
    generator = torch.Generator(device).manual_seed(2)
    angles = torch.rand(CAPACITY, HEAD_DIM // 2, generator=generator) * 3
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
    norm = (1 + 0.1 * torch.randn(HIDDEN, generator=generator)).to(dtype)
    for heads, kv_heads in ((4, 4), (8, 2), (16, 1)):  # one, four and sixteen query heads per KV head
        rows = (heads + 2 * kv_heads) * HEAD_DIM
        w = (0.1 * torch.randn(rows, HIDDEN, generator=generator)).to(dtype)
        b = (0.1 * torch.randn(rows, generator=generator)).to(dtype)
        for batch in (1, 3, 18):
            slots = batch + 1  # one slot more than rows: it must stay untouched
            x = torch.randn(batch, HIDDEN, generator=generator).to(dtype)
            caches = [torch.randn(slots, kv_heads, CAPACITY, HEAD_DIM, generator=generator).to(dtype)
                      for _ in range(2)]
            copies = [c.clone() for c in caches]
            positions = torch.randint(0, CAPACITY - 1, (batch,), generator=generator)
            positions[0] = 260  # five chunks of 64 positions in use, the last partly
            if batch > 1:
                positions[1] = CAPACITY - 1  # an idle slot's row: it writes and attends the scratch position only
            args = (x, norm, 1e-6, w, b, cos, sin)
            q_t = triton_ops.norm_linear_rope_store(*args, *caches, positions, heads, kv_heads)
            q_r = torch_ops.norm_linear_rope_store(*args, *copies, positions, heads, kv_heads)
            assert relative(q_t, q_r) < TOLERANCE[dtype]
            for cache, copy in zip(caches, copies):
                written = cache[torch.arange(batch), :, positions]
                assert relative(written, copy[torch.arange(batch), :, positions]) < TOLERANCE[dtype]
                cache[torch.arange(batch), :, positions] = copy[torch.arange(batch), :, positions]
                assert torch.equal(cache, copy)  # nothing else written, the spare slot included
            attended = triton_ops.attention(q_t, *caches, positions, HEAD_DIM ** -0.5)
            expected = torch_ops.attention(q_t.float(), caches[0].float(), caches[1].float(), positions,
                                           HEAD_DIM ** -0.5)
            assert relative(attended, expected) < TOLERANCE[dtype]
            if batch > 1:
                scratch_values = caches[1][1, :, -1].repeat_interleave(heads // kv_heads, dim=0).reshape(-1)
                assert relative(attended[1], scratch_values) < TOLERANCE[dtype]
            alone = triton_ops.attention(q_t[:1], caches[0][:1], caches[1][:1], positions[:1], HEAD_DIM ** -0.5)
            assert torch.equal(alone, attended[:1])


def check_long_attention(dtype, device="cpu") -> None:
    """More chunks than attention programs per row: a program combines several chunks, an idle row beside."""
    from internlm_demo.generation import triton_kernels

    triton_ops, torch_ops = kernels()
    generator = torch.Generator(device).manual_seed(5)
    capacity = (triton_kernels.ATTENTION_SPLITS + 3) * triton_kernels.ATTENTION_CHUNK + 7
    for heads, kv_heads in ((4, 4), (8, 2)):
        q = torch.randn(3, heads, HEAD_DIM, generator=generator).to(dtype)
        caches = [torch.randn(3, kv_heads, capacity, HEAD_DIM, generator=generator).to(dtype) for _ in range(2)]
        positions = torch.tensor([capacity - 2, capacity - 1, 3])
        attended = triton_ops.attention(q, *caches, positions, HEAD_DIM ** -0.5)
        expected = torch_ops.attention(q.float(), caches[0].float(), caches[1].float(), positions, HEAD_DIM ** -0.5)
        assert relative(attended, expected) < TOLERANCE[dtype]


def check_narrow_heads(dtype, device="cpu") -> None:
    """Heads of 8 dimensions (the tiny v1 fixture's) are narrower than the batched kernel's tile: several
    rows still give the reference's q and cache rows (this crashed on the GPU with a misaligned address)."""
    from internlm_demo.generation.triton_kernels import rope_pairs

    triton_ops, torch_ops = kernels()
    generator = torch.Generator(device).manual_seed(5)
    head_dim, heads, capacity = 8, 4, 40
    angles = torch.rand(capacity, head_dim // 2, generator=generator) * 3
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
    norm = (1 + 0.1 * torch.randn(32, generator=generator)).to(dtype)
    w = (0.1 * torch.randn(3 * heads * head_dim, 32, generator=generator)).to(dtype)
    x = torch.randn(3, 32, generator=generator).to(dtype)
    caches = [torch.zeros(3, heads, capacity, head_dim, dtype=dtype) for _ in range(2)]
    copies = [c.clone() for c in caches]
    positions = torch.tensor([0, 7, 39])
    q_t = triton_ops.norm_linear_rope_store(x, norm, 1e-6, w, None, cos, sin, *caches, positions, heads, heads)
    q_r = torch_ops.norm_linear_rope_store(x, norm, 1e-6, w, None, cos, sin, *copies, positions, heads, heads)
    assert relative(q_t, q_r) < TOLERANCE[dtype]
    assert all(relative(c, r) < TOLERANCE[dtype] for c, r in zip(caches, copies))
    assert rope_pairs(32, 8, minimum=8) is None and rope_pairs(32, 16, minimum=8) == 8
    assert rope_pairs(1, 128, minimum=1) == 1 and rope_pairs(64, 96, minimum=8) == 16


# The sampler's rows: (top_k, top_p, temperature, penalty, scale of the logits; 0: integer levels 0..15, so
# V / 16 tokens share each value). Rows that keep a few tokens (top-k small, top-p on a peaked row) and
# most of them (top-k off: everything, or top-p on a flat row); top-k past the sampler's head chunk; ties at the
# k-th score; top-p 0 and 1; top-k ≥ V; a tiny temperature; greedy rows.
SAMPLER_ROWS = [
    (0, 1.0, 1.0, 1.3, 3), (5, 0.9, 0.7, 1.0, 3), (50, 1.0, 1.3, 0.8, 3), (0, 0.8, 0.8, 1.1, 3),
    (0, 0.5, 1e-9, 1.0, 3), (3, 0.95, 0.0, 2.0, 3), (300, 0.95, 1.0, 1.0, 3), (0, 0.9, 1.0, 1.0, 0.1),
    (0, 0.5, 1.0, 1.0, 0.1), (0, 0.9, 1.0, 1.0, 8), (0, 0.0, 1.0, 1.0, 3), (1 << 20, 1.0, 1.0, 1.0, 3),
    (10, 1.0, 1.0, 1.0, 0), (130, 1.0, 1.0, 1.0, 0), (100, 0.7, 2.0, 1.0, 0), (0, 0.99, 1.0, 1.0, 0),
]


def drawn_positions(logits, seen, penalty, temperature, top_k, top_p, penalize, drawn, expected):
    """Per sampled row, whether ``drawn`` (Triton's ids) and ``expected`` (the reference's) sit at different
    positions of the descending order each sorts in: the Triton sampler's stable sort, ``filtered_probs``'s."""
    from internlm_demo.generation.sampling import filtered_probs, penalize_repeats

    scores = penalize_repeats(logits.float(), seen, penalty) if penalize else logits.float()
    stable = scores.sort(dim=-1, descending=True, stable=True).indices
    differ = []
    for row in torch.nonzero(temperature[:, 0] > 0)[:, 0].tolist():
        _, order = filtered_probs(scores[row:row + 1], temperature[row:row + 1].clamp(min=1e-30),
                                  top_k[row:row + 1], top_p[row:row + 1])
        differ.append(bool(torch.nonzero(stable[row] == drawn[row]) != torch.nonzero(order[0] == expected[row])))
    return differ


def check_sampler(device="cpu") -> None:
    """Greedy rows equal the reference's argmax; sampled rows (``SAMPLER_ROWS``) draw what the reference draws
    with the same (seed, step) noise, and the same row draws the same id alone or in a batch. Vocabularies of
    2000 and 100 entries (neither a multiple of the chunks, 100 shorter than the head chunk) and 1024 (one)."""
    from internlm_demo.generation import triton_kernels as decode_kernels

    # several chunks per pass over a small vocabulary
    decode_kernels.SAMPLER_BLOCK, decode_kernels.SAMPLER_HEAD, decode_kernels.SAMPLER_TAIL = 512, 128, 512
    triton_ops, torch_ops = kernels()
    generator = torch.Generator(device).manual_seed(3)
    rows, disagreements = len(SAMPLER_ROWS), 0
    top_k, top_p, temperature, penalty = (torch.tensor([[s[i]] for s in SAMPLER_ROWS]) for i in range(4))
    for vocab in (2000, 100, 1024):
        for case in range(12):
            logits = torch.stack([scale * torch.randn(vocab, generator=generator) if scale
                                  else torch.randint(0, 16, (vocab,), generator=generator).float()
                                  for *_, scale in SAMPLER_ROWS]).half()
            seen = torch.rand(rows, vocab, generator=generator) < 0.05
            seed = torch.randint(-2**62, 2**62, (rows,), generator=generator)
            step = torch.randint(0, 4096, (rows,), generator=generator)
            for sample in (False, True):
                outcomes = []
                for ops in (triton_ops, torch_ops):
                    token, marks = torch.zeros(rows, dtype=torch.long), seen.clone()
                    ops.choose(logits, marks, penalty, temperature, top_k, top_p, seed, step, token, sample,
                               case % 2 == 1)
                    outcomes.append((token, marks))
                (a, marks_a), (b, _) = outcomes
                greedy_rows = torch.ones(rows, dtype=torch.bool) if not sample else temperature[:, 0] <= 0
                assert torch.equal(a[greedy_rows], b[greedy_rows])
                if sample:  # the same draw is the same sorted position (equal scores may sort differently)
                    disagreements += sum(drawn_positions(logits, seen, penalty, temperature, top_k, top_p,
                                                         case % 2 == 1, a, b))
                assert torch.equal(marks_a, seen | marks_a) and bool(marks_a[torch.arange(rows), a].all())
                assert int((marks_a ^ seen).sum()) <= rows
                if sample:
                    for row in (1, 7):
                        token = torch.zeros(1, dtype=torch.long)
                        triton_ops.choose(logits[row:row + 1], seen[row:row + 1].clone(), penalty[row:row + 1],
                                          temperature[row:row + 1], top_k[row:row + 1], top_p[row:row + 1],
                                          seed[row:row + 1], step[row:row + 1], token, True, case % 2 == 1)
                        assert int(token) == int(a[row])
    assert disagreements <= 2  # a draw may differ only where rounding moves a top-p boundary


def check_engine_on_triton_kernels() -> None:
    """The engine's whole decode step on Triton kernels (two slots) equals the simple path: GQA, dynamic
    NTK past the window."""
    from internlm_demo import GenerationParams, load_chat_model
    from internlm_demo.generation.engine import FastEngine
    from internlm_demo.generation.simple import generate_ids
    from internlm_demo.generation.triton_kernels import TritonDecodeKernels
    from tests.conftest import FIXTURES_DIR, reference

    name = "internlm2-chat-7b-tiny"
    chat = load_chat_model(FIXTURES_DIR / name, device="cpu", progress=False, engine="simple")
    engine = FastEngine(chat.model, slots=2)
    layer = engine.blocks[0].layers[0]
    # large blocks: the interpreter runs each program in numpy, so fewer programs run faster
    blocks = {tuple(t.shape): (128, 128, 4, 1) for t in (layer.qkv, layer.o, layer.gate_up, layer.down)}
    blocks[tuple(engine.lm_head.shape)] = (8192, 64, 4, 1)
    engine.kernels = TritonDecodeKernels(blocks)
    ids = reference(name)["chat_cases"][2]["input_ids"]  # 162 tokens on a 64-token window
    params = GenerationParams(do_sample=False, max_new_tokens=5)
    assert list(engine.generate(ids, params, set())) == list(generate_ids(chat.model, ids, params, set()))


def run_checks(device: str = "cpu", dtypes=(torch.float16,)) -> None:
    """Every check on ``device`` (tensors are made there: call it inside ``with torch.device(device)``)."""
    for dtype in dtypes:
        check_linear_kernels(dtype, device)
        check_rope_store_and_attention(dtype, device)
        check_long_attention(dtype, device)
        check_narrow_heads(dtype, device)
    check_linear_kernels(torch.float16, device, split_k=3)  # K in three parts: 80 columns as 32 + 32 + 16
    check_rows_do_not_depend_on_the_batch(device)
    check_rows_do_not_depend_on_the_batch(device, split_k=3)
    check_sampler(device)


def test_triton_kernels_in_the_interpreter_match_the_torch_reference():
    """Triton decides at import whether to interpret, so the checks run in a fresh interpreter process."""
    pytest.importorskip("triton")
    code = ("import warnings; warnings.simplefilter('ignore', RuntimeWarning); "
            "from tests.test_triton_kernels import run_checks, check_engine_on_triton_kernels as engine; "
            "run_checks(); engine(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
