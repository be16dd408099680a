"""Fast generation behind ChatModel: static KV cache, fused projections, the decode step as one CUDA graph.

The engine runs its own lean forward over the SAME weight tensors as the transformers model: at build
time each layer's q/k/v and gate/up weights are copied into one fused tensor and the model's parameters
become views into it, so both paths share memory. On a GPU the decode step (Triton kernels from
``decode_kernels``, sampling included) is captured in a CUDA graph, tokens reach the host through pinned
memory a few steps behind the GPU, and the host never stalls it. On the CPU the same step runs on plain
torch ops (``TorchDecodeKernels``), which is how the tests prove it equals the simple path.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .params import GenerationParams, GenerationStats
from .sampling import penalize_repeats, sample_filtered

log = logging.getLogger(__name__)

ENGINE_MODES = ("auto", "simple", "fast")
CAPACITY_STEP = 256


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, with its float32 statistics and rounding back to the input dtype."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, as transformers' apply_rotary_pos_emb."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, kv_heads, T, D] → [B, kv_heads * groups, T, D] (grouped-query attention)."""
    if groups == 1:
        return x
    batch, kv_heads, length, dim = x.shape
    return x[:, :, None].expand(batch, kv_heads, groups, length, dim).reshape(batch, kv_heads * groups, length, dim)


# ---- fused weights --------------------------------------------------------------------------------


def _adjacent_rows(parts: list[torch.Tensor]) -> bool:
    """Whether ``parts`` already lie back to back in one storage (an engine was built on this model before)."""
    first = parts[0]
    offset = first.storage_offset()
    for part in parts:
        if (not part.is_contiguous() or part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                or part.storage_offset() != offset):
            return False
        offset += part.numel()
    return True


def fuse_rows(linears: list[nn.Linear], name: str) -> torch.Tensor | None:
    """One tensor holding the ``name`` parameters of ``linears`` stacked by rows; each layer's parameter
    becomes a view into it, so memory is not doubled (the originals are freed)."""
    parts = [getattr(linear, name) for linear in linears]
    if parts[0] is None:
        return None
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    if _adjacent_rows(parts):
        return torch.as_strided(parts[0], shape, torch.empty(shape, device="meta").stride(), parts[0].storage_offset())
    fused = torch.empty(shape, dtype=parts[0].dtype, device=parts[0].device)
    start = 0
    for linear, part in zip(linears, parts):
        rows = part.shape[0]
        fused[start:start + rows].copy_(part)
        linear._parameters[name] = nn.Parameter(fused[start:start + rows], requires_grad=False)
        start += rows
    return fused


@dataclass
class LayerWeights:
    """One decoder layer's tensors in the layout the decode step reads."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # [q rows + k rows + v rows, hidden]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor  # [2 * intermediate, hidden]: gate rows, then up rows
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def fuse_layer(layer) -> LayerWeights:
    """Fuse one transformers LlamaDecoderLayer's projections in place and return its weights."""
    attention, mlp = layer.self_attn, layer.mlp
    qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
    gate_up = [mlp.gate_proj, mlp.up_proj]
    return LayerWeights(
        input_norm=layer.input_layernorm.weight,
        post_norm=layer.post_attention_layernorm.weight,
        qkv=fuse_rows(qkv, "weight"),
        qkv_bias=fuse_rows(qkv, "bias"),
        o=attention.o_proj.weight,
        o_bias=attention.o_proj.bias,
        gate_up=fuse_rows(gate_up, "weight"),
        gate_up_bias=fuse_rows(gate_up, "bias"),
        down=mlp.down_proj.weight,
        down_bias=mlp.down_proj.bias,
    )


# ---- rotary embedding -----------------------------------------------------------------------------


class RopeTable:
    """cos/sin for given positions, as transformers computes them, dynamic NTK included.

    Dynamic NTK (InternLM2) rescales the base once the sequence outgrows the trained window; transformers
    does so per forward call from ``max(position) + 1``, so a prompt is embedded with the frequencies of
    its own length and each later token with those of its position, which makes a decode step's
    cos/sin a function of its position alone: the engine tabulates them per position.
    """

    def __init__(self, rotary_emb, config):
        rope = config.rope_parameters
        self.original_inv_freq = rotary_emb.original_inv_freq.float()
        self.scaling = float(rotary_emb.attention_scaling)
        self.dynamic = "dynamic" in str(rope.get("rope_type", ""))
        self.base = float(rope.get("rope_theta", 10000.0))
        self.factor = float(rope.get("factor", 1.0))
        self.window = int(config.max_position_embeddings)
        self.dim = self.original_inv_freq.shape[0] * 2
        device = self.original_inv_freq.device
        self.exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim

    def inv_freq(self, seq_len: torch.Tensor) -> torch.Tensor:
        """[B, dim/2] frequencies for sequences of ``seq_len`` ([B] int64) tokens."""
        original = self.original_inv_freq.expand(seq_len.shape[0], -1)
        if not self.dynamic:
            return original
        length = torch.clamp(seq_len, min=self.window)
        base = self.base * ((self.factor * length / self.window) - (self.factor - 1)) ** (self.dim / (self.dim - 2))
        scaled = 1.0 / (base[:, None] ** self.exponents)
        return torch.where((seq_len > self.window)[:, None], scaled, original)

    def cos_sin(self, positions: torch.Tensor, seq_len: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [B, T, dim] for ``positions`` [B, T]."""
        freqs = positions[..., None].float() * self.inv_freq(seq_len)[:, None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.scaling).to(dtype), (angles.sin() * self.scaling).to(dtype)


# ---- the decode-step operations -------------------------------------------------------------------


class TorchDecodeKernels:
    """The decode-step operations on plain torch ops: the CPU path and the reference for the Triton ones."""

    name = "torch"

    def norm_linear(self, x, norm_weight, eps, weight, bias):
        return F.linear(rms_norm(x, norm_weight, eps), weight, bias)

    def norm_gated_linear(self, x, norm_weight, eps, weight, bias):
        gate, up = F.linear(rms_norm(x, norm_weight, eps), weight, bias).chunk(2, dim=-1)
        return F.silu(gate) * up

    def linear_add(self, x, weight, bias, residual):
        residual.add_(F.linear(x, weight, bias))

    def norm_linear_rope_store(self, x, norm_weight, eps, weight, bias, cos_table, sin_table, k_cache, v_cache,
                               position, heads, kv_heads):
        """q/k/v of one token; RoPE (rows ``position`` of the tables) on q and k; k and v stored in the
        cache at ``position``. Returns q [1, H, D]."""
        head_dim = k_cache.shape[-1]
        qkv = self.norm_linear(x, norm_weight, eps, weight, bias)
        q, k, v = qkv.view(1, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
        cos, sin = cos_table[position], sin_table[position]
        k_cache[0].index_copy_(1, position, apply_rope(k, cos, sin)[0, :, None])
        v_cache[0].index_copy_(1, position, v[0, :, None])
        return apply_rope(q, cos, sin)

    def choose(self, logits, seen, penalty, temperature, top_k, top_p, noise, token, sample: bool, penalize: bool):
        """Pick the next id into ``token`` (greedy, or a draw with Exp(1) ``noise``) and mark it seen."""
        scores = logits.float()
        if penalize:
            scores = penalize_repeats(scores, seen, penalty)
        chosen = sample_filtered(scores, temperature, top_k, top_p, noise) if sample else scores.argmax(-1)
        token.copy_(chosen)
        seen.scatter_(1, chosen[:, None], True)

    def attention(self, q, k_cache, v_cache, position, scale):
        """Attention of one query over cache positions 0..position (a mask keeps shapes static)."""
        heads, head_dim = q.shape[1], q.shape[2]
        groups = heads // k_cache.shape[1]
        visible = torch.arange(k_cache.shape[2], device=q.device) <= position
        out = F.scaled_dot_product_attention(
            q[:, :, None], repeat_kv(k_cache[:1], groups), repeat_kv(v_cache[:1], groups),
            attn_mask=visible[None, None, None], scale=scale,
        )
        return out.reshape(1, heads * head_dim)


def triton_kernels():
    """The Triton decode kernels, or None when Triton cannot be imported."""
    try:
        from .triton_kernels import TritonDecodeKernels
    except ImportError as exc:
        log.warning("Triton is unavailable (%s); the fast engine uses torch ops in its CUDA graph", exc)
        return None
    return TritonDecodeKernels()


# ---- serving: one generation at a time, first come first served -----------------------------------


class FifoLock:
    """A lock handed to waiters in arrival order, so concurrent chats are served first come, first served."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters: collections.deque[threading.Event] = collections.deque()
        self._held = False

    def __enter__(self):
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # release() hands the lock over directly, so it stays held
        return self

    def __exit__(self, *exc_info):
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False


class KVCache:
    """Preallocated keys and values: [layers, slots, kv_heads, capacity, head_dim] each."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        shape = (layers, 1, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity


class TokenReader:
    """Tokens from the device to the host without stalling the GPU: each step's id is copied into
    pinned memory asynchronously and read only when the caller needs it, steps later."""

    def __init__(self, device: torch.device, slots: int):
        self.on_gpu = device.type == "cuda"
        self.host = torch.zeros(slots, dtype=torch.long, pin_memory=self.on_gpu)
        self.events = [torch.cuda.Event() for _ in range(slots)] if self.on_gpu else []
        self.pushed = 0
        self.popped = 0

    def push(self, token: torch.Tensor) -> None:
        slot = self.pushed % len(self.host)
        self.host[slot:slot + 1].copy_(token, non_blocking=self.on_gpu)
        if self.on_gpu:
            self.events[slot].record()
        self.pushed += 1

    def pop(self) -> int:
        slot = self.popped % len(self.host)
        if self.on_gpu:
            self.events[slot].synchronize()
        self.popped += 1
        return int(self.host[slot])

    @property
    def in_flight(self) -> int:
        return self.pushed - self.popped


# ---- the engine -----------------------------------------------------------------------------------


class FastEngine:
    """Generation over a single-device transformers Llama with a static cache; CUDA graphs on a GPU.

    ``generate`` has the contract of ``generation.generate_ids`` (same stats, stop ids, stop event,
    sampling rules); sampled ids come from a different random stream, so a seed reproduces the
    engine's own output, not the simple path's. One generation runs at a time; callers queue in order.

    ``kernels``: "auto"/"triton" (Triton on a GPU) or "torch"; ``use_graphs``: capture the decode step
    (default: on a GPU); ``lookahead``: decode steps queued beyond the token the caller is reading.
    """

    def __init__(self, model, kernels: str = "auto", use_graphs: bool | None = None, lookahead: int = 2,
                 initial_capacity: int | None = None):
        config = model.config
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.scale = self.head_dim ** -0.5
        with torch.no_grad():
            self.layers = []
            for layer in model.model.layers:
                self.layers.append(fuse_layer(layer))
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # return the unfused copies before the next layer's fused tensors
            self.embed = model.model.embed_tokens.weight
            self.final_norm = model.model.norm.weight
            self.lm_head = model.lm_head.weight
            self.rope = RopeTable(model.model.rotary_emb, config)
        self.vocab = self.lm_head.shape[0]
        on_gpu = self.device.type == "cuda"
        self.kernels = (triton_kernels() if on_gpu and kernels in ("auto", "triton") else None) or TorchDecodeKernels()
        self.use_graphs = on_gpu if use_graphs is None else use_graphs
        self.lookahead = lookahead if on_gpu else 0
        self._turn = FifoLock()
        self._penalize = False
        self._graphs: dict[tuple[bool, bool], torch.cuda.CUDAGraph] = {}  # by (sample, penalize)
        self.generator = torch.Generator(device=self.device)
        with torch.no_grad():
            self.token = torch.zeros(1, dtype=torch.long, device=self.device)
            self.position = torch.zeros(1, dtype=torch.long, device=self.device)
            self.seen = torch.zeros(1, self.vocab, dtype=torch.bool, device=self.device)
            self.noise = torch.ones(1, self.vocab, dtype=torch.float32, device=self.device)
            self.temperature = torch.ones(1, 1, dtype=torch.float32, device=self.device)
            self.top_p = torch.ones(1, 1, dtype=torch.float32, device=self.device)
            self.top_k = torch.zeros(1, 1, dtype=torch.long, device=self.device)
            self.penalty = torch.ones(1, 1, dtype=torch.float32, device=self.device)
        # A GPU starts with room for a 2k conversation; the CPU path grows its cache as prompts need.
        capacity = initial_capacity or (min(max(config.max_position_embeddings, CAPACITY_STEP), 2048)
                                        if on_gpu else CAPACITY_STEP)
        self.cache: KVCache | None = None
        self._allocate(capacity)

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    # -- the forward passes --

    def _prefill(self, prompt_ids: list[int]) -> torch.Tensor:
        """Run the prompt, fill cache positions 0..n-1, return last-position logits [1, V]."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        length = ids.shape[1]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        positions = torch.arange(length, device=self.device)[None]
        cos, sin = self.rope.cos_sin(positions, torch.tensor([length], device=self.device), self.dtype)
        cos, sin = cos[:, None], sin[:, None]
        x = F.embedding(ids, self.embed)
        for index, w in enumerate(self.layers):
            qkv = F.linear(rms_norm(x, w.input_norm, self.eps), w.qkv, w.qkv_bias)
            q, k, v = qkv.view(1, length, heads + 2 * kv_heads, head_dim).transpose(1, 2).split(
                [heads, kv_heads, kv_heads], dim=1)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.cache.k[index, :, :, :length] = k
            self.cache.v[index, :, :, :length] = v
            groups = heads // kv_heads
            attended = F.scaled_dot_product_attention(
                q, repeat_kv(k, groups), repeat_kv(v, groups), is_causal=length > 1, scale=self.scale)
            x = x + F.linear(attended.transpose(1, 2).reshape(1, length, heads * head_dim), w.o, w.o_bias)
            gate, up = F.linear(rms_norm(x, w.post_norm, self.eps), w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.down, w.down_bias)
        return F.linear(rms_norm(x[:, -1], self.final_norm, self.eps), self.lm_head)

    def _decode_logits(self) -> torch.Tensor:
        """Logits [1, V] for ``self.token`` at ``self.position``, its k/v stored in the cache."""
        kernels = self.kernels
        x = F.embedding(self.token, self.embed)
        for index, w in enumerate(self.layers):
            k_cache, v_cache = self.cache.k[index], self.cache.v[index]
            q = kernels.norm_linear_rope_store(x, w.input_norm, self.eps, w.qkv, w.qkv_bias, self.cos_table,
                                               self.sin_table, k_cache, v_cache, self.position, self.heads,
                                               self.kv_heads)
            kernels.linear_add(kernels.attention(q, k_cache, v_cache, self.position, self.scale), w.o, w.o_bias, x)
            hidden = kernels.norm_gated_linear(x, w.post_norm, self.eps, w.gate_up, w.gate_up_bias)
            kernels.linear_add(hidden, w.down, w.down_bias, x)
        return kernels.norm_linear(x, self.final_norm, self.eps, self.lm_head, None)

    def _choose(self, logits: torch.Tensor, sample: bool) -> None:
        """Pick the next id on the device into ``self.token`` and mark it seen."""
        self.kernels.choose(logits, self.seen, self.penalty, self.temperature, self.top_k, self.top_p, self.noise,
                            self.token, sample, self._penalize)

    def _decode_step(self, sample: bool) -> None:
        self._choose(self._decode_logits(), sample)
        self.position.add_(1)

    # -- CUDA graphs and the cache --

    def _allocate(self, capacity: int) -> None:
        """(Re)allocate the cache for ``capacity`` positions and capture the decode graphs against it."""
        self._graphs = {}
        self.cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with torch.no_grad():
            self.cache = KVCache(len(self.layers), self.kv_heads, self.head_dim, capacity, self.dtype, self.device)
            # Row p: cos/sin of a decode step at position p (dynamic NTK sees a p + 1 token sequence there).
            positions = torch.arange(capacity, device=self.device)
            cos, sin = self.rope.cos_sin(positions[:, None], positions + 1, self.dtype)
            self.cos_table, self.sin_table = cos[:, 0].contiguous(), sin[:, 0].contiguous()
        if self.use_graphs:
            try:
                self._capture()
            except Exception:  # a kernel that fails to build must not stop the chat: fall back to torch ops
                if self.kernels.name == "torch":
                    raise
                log.exception("capturing the decode step on Triton kernels failed; using torch ops instead")
                self.kernels = TorchDecodeKernels()
                self._graphs = {}
                self._capture()

    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for sample in (False, True):
                for penalize in (False, True):
                    self._penalize = penalize
                    # A first run outside capture compiles the Triton kernels and creates library handles.
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        self._decode_step(sample)
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                        self._decode_step(sample)
                    self._graphs[(sample, penalize)] = graph
            self._penalize = False
            self.position.zero_()
        torch.cuda.synchronize()

    def _ensure_capacity(self, needed: int) -> None:
        if needed > self.capacity:
            steps = -(-needed // CAPACITY_STEP)
            self._allocate(max(steps * CAPACITY_STEP, 2 * self.capacity))

    def _run_step(self, sample: bool) -> None:
        if sample:
            self.noise.exponential_(generator=self.generator)
        if self._graphs:
            self._graphs[(sample, self._penalize)].replay()
        else:
            self._decode_step(sample)

    # -- generation --

    def _start(self, prompt_ids: list[int], params: GenerationParams, sample: bool) -> None:
        """Set the sampling buffers, run the prompt and choose the first id."""
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        self.temperature.fill_(params.temperature if sample else 1.0)
        self.top_p.fill_(params.top_p)
        self.top_k.fill_(params.top_k or 0)
        self.penalty.fill_(params.repetition_penalty)
        self._penalize = params.repetition_penalty != 1.0
        self.seen.zero_()
        if params.repetition_penalty != 1.0:
            self.seen[0, torch.tensor(prompt_ids, device=self.device)] = True
        if sample:
            self.noise.exponential_(generator=self.generator)
        self._choose(self._prefill(prompt_ids), sample)
        self.position.fill_(len(prompt_ids))

    def generate(self, prompt_ids: list[int], params: GenerationParams, stop_ids: set[int],
                 stats: GenerationStats | None = None, stop: threading.Event | None = None) -> Iterator[int]:
        """Yield new token ids one at a time; a stop id ends generation and is not yielded.

        The engine serves the next caller once this iterator is exhausted or closed.
        """
        with self._turn:
            yield from self._generate(prompt_ids, params, stop_ids, stats, stop)

    def _generate(self, prompt_ids, params, stop_ids, stats, stop) -> Iterator[int]:
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(prompt_ids)
        stats.finish_reason = "length"
        sample = params.do_sample and params.temperature > 0
        start = time.perf_counter()
        if params.max_new_tokens <= 0:
            return
        if stop is not None and stop.is_set():
            stats.finish_reason = "stopped"
            return
        with torch.inference_mode():
            self._ensure_capacity(len(prompt_ids) + params.max_new_tokens)
            reader = TokenReader(self.device, slots=self.lookahead + 2)
            self._start(prompt_ids, params, sample)
            reader.push(self.token)
            try:
                for _ in range(params.max_new_tokens):
                    # Queue the following steps before reading this one, so the GPU keeps working
                    # while the caller handles the token (steps past a stop id are simply dropped).
                    while reader.pushed < params.max_new_tokens and reader.in_flight <= self.lookahead:
                        self._run_step(sample)
                        reader.push(self.token)
                    token = reader.pop()
                    if stop is not None and stop.is_set():
                        stats.finish_reason = "stopped"
                        break
                    if not stats.record(token, stop_ids, start):
                        break
                    yield token
            finally:
                stats.duration_s = time.perf_counter() - start

    def decode_only_tokens_per_s(self, steps: int = 256, sample: bool = False) -> float:
        """Decode rate of back-to-back steps with no host reads: the ceiling ``generate`` streams against."""
        with self._turn, torch.inference_mode():
            self._ensure_capacity(steps + 2)
            self._start([1], GenerationParams(do_sample=sample, max_new_tokens=steps), sample)
            self._run_step(sample)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            for _ in range(steps):
                self._run_step(sample)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            return steps / (time.perf_counter() - began)


def engine_for(model, mode: str, device_map: dict):
    """The engine ``mode`` asks for: "simple" → None, "fast" → FastEngine, "auto" → FastEngine on one GPU.

    A model spread over several devices always uses the simple path (its layers live on different GPUs).
    """
    if mode not in ENGINE_MODES:
        raise ValueError(f"unknown engine {mode!r}; use one of {', '.join(ENGINE_MODES)}.")
    devices = {str(device) for device in device_map.values()}
    single_device = len(devices) == 1
    if mode == "fast" and not single_device:
        raise ValueError("the fast engine needs the whole model on one device; use engine='simple' with several GPUs.")
    if mode == "simple" or not single_device:
        return None
    if mode == "auto" and not next(iter(devices)).startswith("cuda"):
        return None
    return FastEngine(model)
