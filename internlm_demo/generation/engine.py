"""The engine: every generation of a loaded Llama-shaped model, batched over KV-cache slots.

The engine runs its own lean forward over the SAME weight tensors as the transformers model (fused
as views by ``weights``, so both paths share memory).

A request takes a free slot (``Admission``: it waits only while every slot is busy). One scheduler
thread owns the device: between decode steps it prefills newcomers (in chunks, so running streams
never stall for a whole long prompt); each decode step advances every active slot at once through
the ``DecodeKernels`` of ``torch_kernels`` (CPU, reference) or ``triton_kernels`` (GPU), sampling
included, with per-slot sampling settings, seed, stop ids and seen-token mask. A request leaves on a
stop id, its token budget, its stop event or when its reader goes away; its slot is then free for
the next one. On a GPU each batch-size bucket's step is one CUDA graph and tokens reach the host a
few steps behind the GPU, so the GPU never waits for Python.

With ``num_gpus`` the layers form contiguous blocks, one per device, each with its own KV cache; the
hidden state hops from block to block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ContextOverflowError
from ..models.transformers_compat import rope_inputs
from .admission import Admission
from .beams import BeamSearch
from .params import GenerationParams, GenerationStats
from .sampling import samples
from .torch_kernels import TorchDecodeKernels, apply_rope, repeat_kv, rms_norm
from .weights import LayerWeights, RopeTable, fuse_layer

log = logging.getLogger(__name__)

ENGINE_MODES = ("auto", "simple", "fast")
BUCKETS = (1, 2, 4, 8, 16)  # batch sizes a decode step is captured for
MAX_SLOTS = 16
MIN_GPU_SLOTS = 8  # a long window is halved until this many slots fit a GPU (sessions before context)
CPU_SLOTS = 8  # enough for a 5-beam search beside a few chats
MIN_CONTEXT = 2048  # positions per slot at least (prompts may run past a short window, as on the simple path)
MAX_CONTEXT = 32768  # positions per slot at most (a longer window is cut to this)
PREFILL_CHUNK = 512  # prompt tokens per prefill pass between two decode steps
IDLE_PREFILL_CHUNK = 2048  # prompt tokens per pass while no sequence decodes (none waits on it)
REORDER_BYTES = 256 << 20  # the largest temporary of a beam reorder of the KV cache
KV_SHARE_OF_FREE_MEMORY = 0.8  # of the memory left after the weights, on a GPU
KV_SHARE_OF_CPU_MEMORY = 0.5  # of the available RAM, on the CPU


def triton_kernels():
    """The Triton decode kernels, or None when Triton cannot be imported."""
    try:
        from .triton_kernels import TritonDecodeKernels
    except ImportError as exc:
        log.warning("Triton is unavailable (%s); the engine uses torch ops in its CUDA graphs", exc)
        return None
    return TritonDecodeKernels()


# ---- devices, slots and requests ------------------------------------------------------------------


@dataclass
class Block:
    """Contiguous layers on one device, with their KV cache [slots, kv_heads, capacity, head_dim] per layer:
    views of one tensor [layers, slots, kv_heads, capacity, head_dim] for keys and one for values, so that
    moving a slot's cache (beams) is one copy per block."""

    device: torch.device
    layers: list[LayerWeights]
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    cos: torch.Tensor | None = None  # row p: cos/sin of a decode step at position p
    sin: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # [slots] int64: where each slot's next token goes
    advance: torch.Tensor | None = None  # [slots] int64: 1 for a decoding slot, 0 for an idle one
    x_in: torch.Tensor | None = None  # [slots, hidden]: the hidden state handed over from the previous block


@dataclass(frozen=True)
class EngineState:
    """What the engine runs with, for the model panel and ``/v1/models``."""

    kernels: str
    slots: int
    positions_per_slot: int
    kv_cache_gib: float
    devices: tuple[str, ...]
    cuda_graphs: bool

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return (f"batched engine: {self.kernels} kernels, {self.slots} slots × {self.positions_per_slot} positions, "
                f"KV cache {self.kv_cache_gib:.2f} GiB on {', '.join(dict.fromkeys(self.devices))}{graphs}")


END = object()  # the last item of a request's token queue


@dataclass(eq=False)
class Request:
    """One generation in the engine: its prompt, settings and the queue its tokens arrive on."""

    prompt_ids: list[int] | None
    prompt_embeds: torch.Tensor | None
    seen_ids: list[int]  # ids the repetition penalty sees from the start
    params: GenerationParams
    stop_ids: frozenset[int]
    stats: GenerationStats
    stop: threading.Event | None
    seed: int
    beams: BeamSearch | None = None  # a beam search: one slot per beam, ``tokens`` carries row 0's ids
    tokens: queue.Queue = field(default_factory=queue.Queue)
    started: float = field(default_factory=time.perf_counter)
    slots: list[int] = field(default_factory=list)  # slots[0] holds the prompt; the others its beams
    prefilled: int = 0  # prompt positions already in the cache
    launched: int = 0  # tokens chosen or queued on the device
    closed: bool = False  # the reader went away
    finished: bool = False

    @property
    def slot(self) -> int:
        return self.slots[0]

    @property
    def width(self) -> int:
        """Slots this request holds."""
        return self.beams.settings.num_beams if self.beams is not None else 1

    @property
    def length(self) -> int:
        return len(self.prompt_ids) if self.prompt_ids is not None else self.prompt_embeds.shape[1]

    @property
    def cancelled(self) -> bool:
        return self.closed or (self.stop is not None and self.stop.is_set())


class TokenReader:
    """Tokens from the device to the host without stalling the GPU: each step's ids are copied into a
    ring of pinned host rows asynchronously and read only steps later, with which request each row serves."""

    def __init__(self, device: torch.device, depth: int, width: int):
        self.device = device
        self.on_gpu = device.type == "cuda"
        self.host = torch.zeros(depth, width, dtype=torch.long, pin_memory=self.on_gpu)
        self.events = [torch.cuda.Event() for _ in range(depth)] if self.on_gpu else []
        self.rows: deque[tuple[int, list[tuple[int, Request]]]] = deque()
        self.pushed = 0

    def push(self, tokens: torch.Tensor, owners: list[tuple[int, Request]]) -> None:
        """Queue the copy of ``tokens`` [n]; ``owners`` are (index in tokens, request) pairs."""
        ring = self.pushed % self.host.shape[0]
        with on_device(self.device):  # the event must follow the copy on the tokens' device, not the current one
            self.host[ring, :tokens.shape[0]].copy_(tokens, non_blocking=self.on_gpu)
            if self.on_gpu:
                self.events[ring].record()
        self.rows.append((ring, owners))
        self.pushed += 1

    def pop(self) -> list[tuple[int, Request]]:
        """The oldest queued step as (token, request) pairs."""
        ring, owners = self.rows.popleft()
        if self.on_gpu:
            self.events[ring].synchronize()
        values = self.host[ring].tolist()
        return [(values[index], request) for index, request in owners]

    @property
    def in_flight(self) -> int:
        return len(self.rows)


def _copy_slots(cache: torch.Tensor, source: torch.Tensor, target: torch.Tensor, used: int) -> None:
    """cache[:, target, :, :used] = cache[:, source, :, :used] over all layers of a block, a few layers per
    copy so that the gathered temporary stays under REORDER_BYTES."""
    layers, _, kv_heads, _, head_dim = cache.shape
    per_layer = len(source) * kv_heads * used * head_dim * cache.element_size()
    step = max(1, REORDER_BYTES // max(per_layer, 1))
    for first in range(0, layers, step):
        part = cache[first:first + step]
        part[:, target, :, :used] = part[:, source, :, :used]


def to_device(values, device: torch.device, dtype=torch.long) -> torch.Tensor:
    """Host ``values`` (a list or a CPU tensor) on ``device`` without waiting for the work queued there: a
    copy from pageable memory first waits for the stream to drain (the decode steps queued ahead), one from
    pinned memory does not."""
    tensor = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def on_device(device: torch.device):
    """Make ``device`` current (Triton launches on the current CUDA device); nothing on the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


# ---- the engine -----------------------------------------------------------------------------------


class FastEngine:
    """Batched generation over a transformers Llama: KV slots, continuous batching, CUDA graphs on a GPU.

    ``generate`` has the contract of ``simple.generate_ids`` (same stats, stop ids, stop event, sampling
    rules); sampled ids come from the engine's own random stream, so a seed reproduces the engine's
    output (whatever runs beside it), not the simple path's.

    ``window``: the model's context window (default: its ``max_position_embeddings``); ``kernels``:
    "auto"/"triton" (Triton on a GPU) or "torch"; ``slots``/``capacity``: sequences and positions per
    sequence (default: the window within [MIN_CONTEXT, MAX_CONTEXT], slots from free memory, the window
    halved on a GPU while fewer than MIN_GPU_SLOTS would fit);
    ``blocks``: (device, layer count) per block (default: where the model's layers are); ``use_graphs``:
    capture the decode step, one graph per block (default: on GPUs); ``lookahead``: decode steps queued
    beyond the tokens the host has read; ``prefill_chunk``: prompt tokens per prefill pass while others decode
    (``idle_prefill_chunk`` while none does).
    """

    def __init__(self, model, window: int | None = None, kernels: str = "auto", slots: int | None = None,
                 capacity: int | None = None, blocks: Sequence[tuple[str, int]] | None = None,
                 use_graphs: bool | None = None, lookahead: int = 2, prefill_chunk: int = PREFILL_CHUNK,
                 idle_prefill_chunk: int = IDLE_PREFILL_CHUNK):
        config = model.config
        self.model = model
        self.dtype = model.get_input_embeddings().weight.dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.scale = self.head_dim ** -0.5
        self.prefill_chunk, self.idle_prefill_chunk = prefill_chunk, max(prefill_chunk, idle_prefill_chunk)
        with torch.no_grad():
            layers = []
            for layer in model.model.layers:
                layers.append(fuse_layer(layer))
                if layer.input_layernorm.weight.device.type == "cuda":
                    torch.cuda.empty_cache()  # return the unfused copies before the next layer's fused tensors
            self.embed = model.model.embed_tokens.weight
            self.final_norm = model.model.norm.weight
            self.lm_head = model.lm_head.weight
            self.rope = RopeTable(rope_inputs(model), config)
        self.blocks = self._make_blocks(layers, blocks)
        self.device = self.lm_head.device  # where sampling state lives
        self.vocab = self.lm_head.shape[0]
        on_gpu = self.device.type == "cuda"
        # a stage graph touches one device: the embeddings must sit with the first block, the head with the last
        stageable = self.embed.device == self.blocks[0].device and self.device == self.blocks[-1].device
        self.kernels = (triton_kernels() if on_gpu and kernels in ("auto", "triton") else None) or TorchDecodeKernels()
        self.use_graphs = (on_gpu and stageable) if use_graphs is None else use_graphs
        self.lookahead = lookahead if on_gpu else 0
        window = min(max(window or int(config.max_position_embeddings), MIN_CONTEXT), MAX_CONTEXT)
        self.slots, self.capacity = self._size_cache(slots, capacity, window)
        self.buckets = [b for b in BUCKETS if b < self.slots] + [self.slots]
        self._allocate()
        self.admission = Admission(self.slots)
        self._graphs: dict[tuple[int, bool, bool], list[tuple]] = {}  # per stage: graph, output, logits
        self._logits: torch.Tensor | None = None  # the last decode step's logits [batch, V]
        if self.use_graphs:
            self._capture_all()
        self._free_slots = list(range(self.slots))
        self._prefilling: deque[Request] = deque()
        self._decoding: dict[int, Request] = {}
        self._waiting: dict[int, Request] = {}  # by id() of the request's stats, the admission's ticket
        self._reader = TokenReader(self.device, self.lookahead + 3, self.slots)
        self._wake = threading.Condition()
        self._scheduler: threading.Thread | None = None
        self._closed = False

    # -- construction --

    def _make_blocks(self, layers: list[LayerWeights], blocks) -> list[Block]:
        if blocks is None:
            blocks = []
            for weights in layers:
                device = str(weights.qkv.device)
                if blocks and blocks[-1][0] == device:
                    blocks[-1] = (device, blocks[-1][1] + 1)
                else:
                    blocks.append((device, 1))
        if sum(count for _, count in blocks) != len(layers):
            raise ValueError(f"the blocks hold {sum(c for _, c in blocks)} layers; the model has {len(layers)}")
        made, start = [], 0
        for device, count in blocks:
            made.append(Block(torch.device(device), layers[start:start + count]))
            start += count
        return made

    def _size_cache(self, slots: int | None, capacity: int | None, window: int) -> tuple[int, int]:
        """(slots, positions per slot): one scratch position past the window, slots from free memory."""
        capacity = capacity or window + 1
        if slots is not None:
            return slots, capacity
        on_gpu = self.device.type == "cuda"
        share = KV_SHARE_OF_FREE_MEMORY if on_gpu else KV_SHARE_OF_CPU_MEMORY
        budget = min(_free_memory_bytes(b.device) for b in self.blocks) * share * len(self.blocks)
        bytes_per_position = (sum(2 * len(b.layers) for b in self.blocks) * self.kv_heads * self.head_dim
                              * torch.finfo(self.dtype).bits // 8)
        if not on_gpu:  # CPU pages are committed only as positions fill, so one slot is always possible
            return max(1, min(int(budget // (bytes_per_position * capacity)), CPU_SLOTS)), capacity
        while budget // (bytes_per_position * capacity) < MIN_GPU_SLOTS and capacity - 1 > MIN_CONTEXT:
            capacity = (capacity - 1) // 2 + 1
        fits = int(budget // (bytes_per_position * capacity))
        if fits < 1:
            raise ContextOverflowError(
                f"the KV cache for one {capacity - 1}-token sequence needs "
                f"{bytes_per_position * capacity / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB available; "
                "use a smaller model or more GPUs.")
        return min(fits, MAX_SLOTS), capacity

    def _allocate(self) -> None:
        shape = (self.slots, self.kv_heads, self.capacity, self.head_dim)
        positions = torch.arange(self.capacity)
        for block in self.blocks:
            # A GPU's masked attention may read every position (zeros keep that finite); the CPU reads only the
            # positions in use, so its cache is left unwritten and costs memory only as sequences fill it.
            new = torch.zeros if block.device.type == "cuda" else torch.empty
            with torch.no_grad():
                block.keys = new((len(block.layers), *shape), dtype=self.dtype, device=block.device)
                block.values = new((len(block.layers), *shape), dtype=self.dtype, device=block.device)
                block.k, block.v = list(block.keys.unbind(0)), list(block.values.unbind(0))
                # Row p: a decode step at position p (dynamic NTK sees a p + 1 token sequence there).
                cos, sin = self.rope.cos_sin(positions[:, None], positions + 1, self.dtype)
                block.cos, block.sin = cos[:, 0].to(block.device), sin[:, 0].to(block.device)
                block.positions = torch.full((self.slots,), self.scratch, dtype=torch.long, device=block.device)
                block.advance = torch.zeros(self.slots, dtype=torch.long, device=block.device)
                block.x_in = torch.zeros(self.slots, self.embed.shape[1], dtype=self.dtype, device=block.device)
        device, slots = self.device, self.slots
        self.token = torch.zeros(slots, dtype=torch.long, device=device)
        self.step = torch.zeros(slots, dtype=torch.long, device=device)
        self.seed = torch.zeros(slots, dtype=torch.long, device=device)
        self.seen = torch.zeros(slots, self.vocab, dtype=torch.bool, device=device)
        self.temperature = torch.zeros(slots, 1, dtype=torch.float32, device=device)
        self.top_p = torch.ones(slots, 1, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.penalty = torch.ones(slots, 1, dtype=torch.float32, device=device)
        # the ids the first block embeds (the chosen ids themselves when one device holds everything)
        self._token_in = self.token if self.embed.device == device else torch.zeros_like(self.token,
                                                                                         device=self.embed.device)
        self._stage_out: list[torch.Tensor | None] = [None] * len(self.blocks)

    @property
    def scratch(self) -> int:
        """The cache position idle rows write to; no sequence ever reads it."""
        return self.capacity - 1

    @property
    def max_sequence(self) -> int:
        """Prompt plus new tokens one request may hold."""
        return self.capacity - 1

    @property
    def state(self) -> EngineState:
        cache_bytes = sum(t.numel() * t.element_size() for b in self.blocks for t in (b.keys, b.values) if t is not None)
        return EngineState(self.kernels.name, self.slots, self.max_sequence, cache_bytes / 2**30,
                           tuple(str(b.device) for b in self.blocks), bool(self._graphs))

    # -- the forward passes --

    def _prefill_chunk(self, request: Request) -> torch.Tensor | None:
        """Run the next chunk of ``request``'s prompt into its slot; the last position's logits [1, V]
        once the whole prompt is in."""
        slot, start, length = request.slot, request.prefilled, request.length
        chunk = self.prefill_chunk if self._decoding else self.idle_prefill_chunk
        end = min(start + chunk, length)
        count = end - start
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        first = self.blocks[0].device
        if request.prompt_embeds is not None:
            x = request.prompt_embeds[:, start:end].to(device=first, dtype=self.dtype)
        else:
            x = F.embedding(to_device([request.prompt_ids[start:end]], self.embed.device), self.embed).to(first)
        positions = torch.arange(start, end)[None]
        # transformers embeds a prompt with the rope frequencies of its whole length (dynamic NTK)
        cos, sin = self.rope.cos_sin(positions, torch.tensor([length]), self.dtype)
        groups = heads // kv_heads
        for block in self.blocks:
            x = x.to(block.device)
            cos_b, sin_b = (to_device(table[:, None], block.device, self.dtype) for table in (cos, sin))
            visible = None
            if start > 0:
                keys = torch.arange(end, device=block.device)
                visible = keys[None, :] <= to_device(positions, block.device)[0, :, None]
            for w, k_cache, v_cache in zip(block.layers, block.k, block.v):
                qkv = F.linear(rms_norm(x, w.input_norm, self.eps), w.qkv, w.qkv_bias)
                q, k, v = qkv.view(1, count, heads + 2 * kv_heads, head_dim).transpose(1, 2).split(
                    [heads, kv_heads, kv_heads], dim=1)
                q, k = apply_rope(q, cos_b, sin_b), apply_rope(k, cos_b, sin_b)
                k_cache[slot, :, start:end] = k[0]
                v_cache[slot, :, start:end] = v[0]
                if start == 0:
                    attended = F.scaled_dot_product_attention(
                        q, repeat_kv(k, groups), repeat_kv(v, groups), is_causal=count > 1, scale=self.scale)
                else:
                    attended = F.scaled_dot_product_attention(
                        q, repeat_kv(k_cache[slot:slot + 1, :, :end], groups),
                        repeat_kv(v_cache[slot:slot + 1, :, :end], groups), attn_mask=visible, scale=self.scale)
                x = x + F.linear(attended.transpose(1, 2).reshape(1, count, heads * head_dim), w.o, w.o_bias)
                gate, up = F.linear(rms_norm(x, w.post_norm, self.eps), w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
                x = x + F.linear(F.silu(gate) * up, w.down, w.down_bias)
        request.prefilled = end
        if end < length:
            return None
        return F.linear(rms_norm(x[:, -1].to(self.device), self.final_norm, self.eps), self.lm_head)

    def _decode_step(self, batch: int, sample: bool, penalize: bool) -> None:
        """One token for rows 0..batch-1 (slot b is row b): their k/v stored, the next ids chosen."""
        for index, block in enumerate(self.blocks):
            with on_device(block.device):
                self._hop(index, batch)
                self._stage(index, batch, sample, penalize)

    def _hop(self, index: int, batch: int) -> None:
        """Bring a stage's input onto its device: the chosen ids to the first block, the hidden state onwards."""
        if index == 0:
            if self._token_in is not self.token:
                self._token_in[:batch].copy_(self.token[:batch])
        else:
            self.blocks[index].x_in[:batch].copy_(self._stage_out[index - 1])

    def _stage(self, index: int, batch: int, sample: bool, penalize: bool) -> None:
        """One block's layers for ``batch`` rows on its device; the last block also chooses the next ids.

        A stage reads and writes only its own device, so each can be one CUDA graph."""
        kernels, block = self.kernels, self.blocks[index]
        if index == 0:
            x = F.embedding(self._token_in[:batch], self.embed).to(block.device)
        else:
            x = block.x_in[:batch]
        positions = block.positions[:batch]
        for w, k_cache, v_cache in zip(block.layers, block.k, block.v):
            q = kernels.norm_linear_rope_store(x, w.input_norm, self.eps, w.qkv, w.qkv_bias, block.cos, block.sin,
                                               k_cache, v_cache, positions, self.heads, self.kv_heads)
            kernels.linear_add(kernels.attention(q, k_cache, v_cache, positions, self.scale), w.o, w.o_bias, x)
            hidden = kernels.norm_gated_linear(x, w.post_norm, self.eps, w.gate_up, w.gate_up_bias)
            kernels.linear_add(hidden, w.down, w.down_bias, x)
        block.positions[:batch] += block.advance[:batch]
        self._stage_out[index] = x
        if index == len(self.blocks) - 1:
            logits = kernels.norm_linear(x.to(self.device), self.final_norm, self.eps, self.lm_head, None)
            self._logits = logits
            kernels.choose(logits, self.seen[:batch], self.penalty[:batch], self.temperature[:batch],
                           self.top_k[:batch], self.top_p[:batch], self.seed[:batch], self.step[:batch],
                           self.token[:batch], sample, penalize)
            self.step[:batch] += block.advance[:batch].to(self.device)

    def _capture_all(self) -> None:
        """CUDA graphs per (bucket, sample, penalize), one per block's device, captured while every slot is idle.

        A kernel that fails to build must not stop the chat: torch ops are tried next, then no graphs."""
        pools = {block.device: torch.cuda.graph_pool_handle() for block in self.blocks}
        try:
            with torch.inference_mode():
                for batch in self.buckets:
                    for sample in (False, True):
                        for penalize in (False, True):
                            self._graphs[(batch, sample, penalize)] = [
                                self._capture(index, batch, sample, penalize, pools[block.device])
                                for index, block in enumerate(self.blocks)]
        except Exception:  # noqa: BLE001 - logged; generation goes on without the failing piece
            self._graphs = {}
            if self.kernels.name == "torch":
                log.exception("capturing the decode step failed; it runs without CUDA graphs")
                return
            log.exception("capturing the decode step on %s kernels failed; using torch ops", self.kernels.name)
            self.kernels = TorchDecodeKernels()
            self._capture_all()
        self._synchronize()

    def _capture(self, index: int, batch: int, sample: bool, penalize: bool, pool) -> tuple:
        """(graph, its output buffer, its logits buffer or None) for one stage; replays rewrite the buffers."""
        device = self.blocks[index].device
        with torch.cuda.device(device):
            side = torch.cuda.Stream()  # a first run outside capture compiles kernels and creates library handles
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._hop(index, batch)
                self._stage(index, batch, sample, penalize)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self._logits = None
            # on this device's own stream: torch's default capture stream belongs to the device current when
            # it was first made, and capturing there sends another device's kernels to an uncaptured stream
            with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                self._stage(index, batch, sample, penalize)
        return graph, self._stage_out[index], self._logits

    def _run_step(self, batch: int, sample: bool, penalize: bool) -> None:
        stages = self._graphs.get((batch, sample, penalize))
        if stages is None:
            self._decode_step(batch, sample, penalize)
            return
        for index, (graph, out, _) in enumerate(stages):
            with on_device(self.blocks[index].device):
                self._hop(index, batch)
                graph.replay()
            self._stage_out[index] = out
        self._logits = stages[-1][2]

    # -- slots --

    def _set_position(self, slot: int, position: int, advance: int) -> None:
        for block in self.blocks:
            block.positions[slot] = position
            block.advance[slot] = advance

    def _start_decoding(self, request: Request, logits: torch.Tensor) -> None:
        """Set the slot's sampling state and choose the first new id from the prompt's logits."""
        slot, params = request.slot, request.params
        sample = samples(params)
        self.temperature[slot] = params.temperature if sample else 0.0
        self.top_p[slot] = params.top_p
        self.top_k[slot] = params.top_k
        self.penalty[slot] = params.repetition_penalty
        self.seed[slot] = request.seed
        self.step[slot] = 0
        self.seen[slot] = False
        if request.seen_ids:
            self.seen[slot, to_device(request.seen_ids, self.device)] = True
        rows = slice(slot, slot + 1)
        with on_device(self.device):
            self.kernels.choose(logits, self.seen[rows], self.penalty[rows], self.temperature[rows], self.top_k[rows],
                                self.top_p[rows], self.seed[rows], self.step[rows], self.token[rows], sample,
                                params.repetition_penalty != 1.0)
        self.step[slot] = 1
        request.launched = 1
        self._reader.push(self.token[rows], [(0, request)])
        if request.launched < params.max_new_tokens:
            self._set_position(slot, request.length, 1)
            self._decoding[slot] = request

    def _stop_launching(self, slot: int) -> None:
        self._decoding.pop(slot, None)
        self._set_position(slot, self.scratch, 0)

    # -- the scheduler --

    def _admit(self) -> None:
        while self._free_slots:
            stats = self.admission.take()
            if stats is None:
                return
            request = self._waiting.pop(id(stats))
            request.slots = self._free_slots[:request.width]
            del self._free_slots[:request.width]
            self._prefilling.append(request)

    def _prefill_next(self) -> None:
        request = self._prefilling[0]
        if request.cancelled:
            self._prefilling.popleft()
            self._finish(request, "stopped")
            return
        try:
            logits = self._prefill_chunk(request)
            if logits is not None:
                self._prefilling.popleft()
                if request.beams is not None:
                    self._start_beams(request, logits)
                else:
                    self._start_decoding(request, logits)
        except Exception as exc:  # noqa: BLE001 - this request fails; the engine and the others go on
            log.exception("prefill failed")
            if self._prefilling and self._prefilling[0] is request:  # it may have left the line already
                self._prefilling.popleft()
            self._finish(request, "error", exc)

    def _decode(self) -> None:
        top = max(self._decoding) + 1  # rows below it whose slot is idle compute unused results
        batch = next(b for b in self.buckets if b >= top) if self._graphs else top
        owners = [(slot, request) for slot, request in self._decoding.items() if request.beams is None]
        searches = list({id(r): r for r in self._decoding.values() if r.beams is not None}.values())
        sample = any(samples(request.params) for _, request in owners)
        penalize = any(request.params.repetition_penalty != 1.0 for _, request in owners)
        self._run_step(batch, sample, penalize)
        if owners:
            self._reader.push(self.token[:batch], owners)
        for slot, request in owners:
            request.launched += 1
            if request.launched >= request.params.max_new_tokens:
                self._stop_launching(slot)
        for request in searches:
            self._beam_step(request, self._logits[request.slots].float())

    # -- beams --

    def _start_beams(self, request: Request, logits: torch.Tensor) -> None:
        """Copy the prompt's keys and values to every beam's slot and take the first beam step."""
        length, first, others = request.length, request.slot, request.slots[1:]
        for block in self.blocks:
            for cache in (block.keys, block.values):
                cache[:, others, :, :length] = cache[:, first, None, :, :length]
        for slot in request.slots:
            self.temperature[slot] = 0.0  # the decode step's own choice is unused for beams
            self.penalty[slot] = 1.0
            self._set_position(slot, length, 1)
            self._decoding[slot] = request
        request.launched = 0
        self._beam_step(request, logits.float().expand(len(request.slots), -1))

    def _beam_step(self, request: Request, logits: torch.Tensor) -> None:
        """One beam step on the host; the beams' keys and values reordered on the device, their next ids set."""
        if request.cancelled:
            self._finish(request, "stopped")
            return
        order, tokens, finished = request.beams.step(logits)
        request.launched += 1
        if finished:
            self._finish(request, "stop")
            return
        # only the beams whose row now continues another beam get that beam's keys and values
        moved = [(request.slots[row], request.slots[beam]) for row, beam in enumerate(order.tolist()) if beam != row]
        if moved:
            used = request.length + request.launched - 1  # positions holding keys and values
            target, source = zip(*moved)
            for block in self.blocks:
                for cache in (block.keys, block.values):
                    _copy_slots(cache, to_device(source, block.device), to_device(target, block.device), used)
        self.token[to_device(request.slots, self.device)] = to_device(tokens, self.device)
        request.tokens.put(request.beams.output_ids)

    def _deliver(self, keep: int) -> None:
        """Hand the tokens of all but the newest ``keep`` queued steps to their requests."""
        while self._reader.in_flight > keep:
            for token, request in self._reader.pop():
                if request.finished:
                    continue  # steps queued before its end was known
                if request.cancelled:
                    self._finish(request, "stopped")
                elif not request.stats.record(token, request.stop_ids, request.started):
                    self._finish(request, "stop")
                else:
                    request.tokens.put(token)
                    if request.stats.new_tokens >= request.params.max_new_tokens:
                        self._finish(request, "length")

    def _finish(self, request: Request, reason: str, error: BaseException | None = None) -> None:
        if request.finished:
            return
        request.finished = True
        # a reader that was told to stop may have ended its stream already: it stays "stopped"
        request.stats.finish_reason = "stopped" if error is None and request.cancelled else reason
        request.stats.duration_s = time.perf_counter() - request.started
        if request.slots:
            for slot in request.slots:
                if self._decoding.get(slot) is request:
                    self._stop_launching(slot)
            self._free_slots = sorted(self._free_slots + request.slots)
            self.admission.release(len(request.slots))
            request.slots = []
        request.tokens.put(error if error is not None else END)

    def _drop_cancelled_waiters(self) -> None:
        for request in list(self._waiting.values()):
            if request.cancelled:
                self.admission.leave(request.stats)
                del self._waiting[id(request.stats)]
                self._finish(request, "stopped")

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._waiting or self._prefilling or self._decoding or self._reader.in_flight):
                        if self._closed:
                            return
                        self._wake.wait()
                    self._drop_cancelled_waiters()
                    self._admit()
                try:
                    if self._prefilling:
                        self._prefill_next()
                    if self._decoding:
                        self._decode()
                    self._deliver(self.lookahead if self._decoding else 0)
                except Exception as exc:  # noqa: BLE001 - the running requests fail, the engine stays usable
                    log.exception("the engine's decode step failed")
                    self._fail_running(exc)

    def _fail_running(self, error: Exception) -> None:
        while self._reader.in_flight:
            self._reader.rows.popleft()
        for request in [*self._prefilling, *self._decoding.values()]:
            self._finish(request, "error", error)
        self._prefilling.clear()

    def decode_rate(self, batch: int = 1, steps: int = 256, sample: bool = False) -> float:
        """Decode steps per second with ``batch`` rows active, back to back with no host reads: the ceiling
        streams run against. Only while the engine is idle (it writes scratch keys and values into the slots)."""
        with self._wake, torch.inference_mode():
            if self._waiting or self._prefilling or self._decoding or self._reader.in_flight:
                raise RuntimeError("decode_rate needs an idle engine")
            bucket = next(b for b in self.buckets if b >= batch)
            for slot in range(batch):
                self._set_position(slot, 0, 1)
                self.temperature[slot] = 1.0 if sample else 0.0
            try:
                self._run_step(bucket, sample, False)
                self._synchronize()
                began = time.perf_counter()
                for _ in range(steps):
                    self._run_step(bucket, sample, False)
                self._synchronize()
                return steps / (time.perf_counter() - began)
            finally:
                for slot in range(batch):
                    self._set_position(slot, self.scratch, 0)

    def close(self) -> None:
        """Let running requests finish, refuse new ones, stop the scheduler and free the KV cache and graphs."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._scheduler is not None:
            self._scheduler.join()
        self._graphs = {}
        for block in self.blocks:
            block.keys = block.values = None
            block.k, block.v = [], []

    def _synchronize(self) -> None:
        for device in {block.device for block in self.blocks}:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    # -- the door --

    def submit(self, params: GenerationParams, stop_ids: set[int], stats: GenerationStats | None = None,
               stop: threading.Event | None = None, prompt_ids: list[int] | None = None,
               prompt_embeds: torch.Tensor | None = None, seen_ids: list[int] | None = None,
               beams: BeamSearch | None = None) -> Request:
        """Queue a request (ids, or embeddings [1, T, hidden] with the ids its penalty sees); returns it."""
        stats = stats if stats is not None else GenerationStats()
        request = Request(prompt_ids, prompt_embeds, list(prompt_ids if seen_ids is None else seen_ids), params,
                          frozenset(stop_ids), stats, stop,
                          params.seed if params.seed is not None else random.getrandbits(62), beams)
        stats.prompt_tokens = request.length
        stats.finish_reason = "length"
        if request.length == 0:
            raise ValueError("the prompt is empty")
        if request.length + params.max_new_tokens > self.max_sequence:
            raise ContextOverflowError(
                f"the prompt ({request.length} tokens) plus {params.max_new_tokens} new tokens exceeds the "
                f"{self.max_sequence} positions of a generation slot; shorten the prompt or the reply.")
        with self._wake:
            if self._closed:
                raise RuntimeError("this engine was closed; load the model again")
            if self._scheduler is None:
                self._scheduler = threading.Thread(target=self._run, name="engine-scheduler", daemon=True)
                self._scheduler.start()
            if params.max_new_tokens == 0 or request.cancelled:
                self._finish(request, "length" if params.max_new_tokens == 0 else "stopped")
                return request
            self.admission.join(stats, request.width)
            self._waiting[id(stats)] = request
            self._wake.notify_all()
        return request

    def stream(self, request: Request) -> Iterator[int]:
        """The request's ids as they arrive; closing the iterator ends the request.

        Its stop event ends the stream at once, even when the engine has computed further ids already."""
        try:
            while (item := request.tokens.get()) is not END:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"generation failed: {item}") from item
                if request.stop is not None and request.stop.is_set():
                    request.stats.finish_reason = "stopped"
                    return
                yield item
        finally:
            request.closed = True
            with self._wake:
                self._wake.notify_all()

    def generate(self, prompt_ids: list[int], params: GenerationParams, stop_ids: set[int],
                 stats: GenerationStats | None = None, stop: threading.Event | None = None) -> Iterator[int]:
        """Yield new token ids one at a time; a stop id ends generation and is not yielded."""
        return self.stream(self.submit(params, stop_ids, stats, stop, prompt_ids=list(prompt_ids)))

    def generate_from_embeddings(self, prompt_embeds: torch.Tensor, seen_ids: list[int], params: GenerationParams,
                                 stop_ids: set[int], stats: GenerationStats | None = None,
                                 stop: threading.Event | None = None) -> Iterator[int]:
        """``generate`` for a prompt given as embeddings [1, T, hidden]; ``seen_ids`` are what the
        repetition penalty sees from the start."""
        return self.stream(self.submit(params, stop_ids, stats, stop, prompt_embeds=prompt_embeds, seen_ids=seen_ids))

    def beam_search(self, search: BeamSearch, stats: GenerationStats | None = None,
                    stop: threading.Event | None = None, prompt_ids: list[int] | None = None,
                    prompt_embeds: torch.Tensor | None = None) -> Iterator[list[int]]:
        """Run ``search`` with one slot per beam; yields its ``output_ids`` after each step that does not end
        it (then ``search.finish()`` gives the result). Keys and values are reordered on the device."""
        params = GenerationParams(do_sample=False, max_new_tokens=search.settings.max_length - 1)
        return self.stream(self.submit(params, set(), stats, stop, prompt_ids, prompt_embeds, seen_ids=[],
                                       beams=search))


def describe_engine(engine: FastEngine | None) -> str:
    """One line for ModelInfo and the model panel: which engine makes the tokens, its kernels, slots, KV budget."""
    if engine is None:
        return "simple path: transformers forward, one generation at a time"
    return engine.state.describe()


def engine_for(model, mode: str, window: int):
    """The engine ``mode`` asks for: "simple" → None, "fast" or "auto" → FastEngine."""
    if mode not in ENGINE_MODES:
        raise ValueError(f"unknown engine {mode!r}; use one of {', '.join(ENGINE_MODES)}.")
    if mode == "simple":
        return None
    return FastEngine(model, window)
