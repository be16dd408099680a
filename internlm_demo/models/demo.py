"""Embedded demo models: tiny InternLM-format checkpoints generated locally on first use.

They have random weights, so their replies are noise; they exist so that every app starts
on a machine without downloaded weights, and they are labelled as demo models wherever
they appear.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import sentencepiece
import torch

DEMO_CORPUS = Path(__file__).with_name("data") / "demo_corpus.txt"
DEMO_VERSION = "2"
DEMO_DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
DEMO_SEED = 20231001
DEMO_BIAS_FEATURE = 4.0  # the constant embedding dimension the head's biases ride on
DEMO_END_BIAS = 0.8  # head weight on it for <eoa>: a reply of a few dozen tokens at the demo temperature


def cache_root() -> Path:
    """``$INTERNLM_DEMO_CACHE`` or ``~/.cache/internlm-demo``."""
    configured = os.environ.get("INTERNLM_DEMO_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "internlm-demo"


def train_demo_tokenizer(out_dir: Path, markers: tuple[str, ...] = ("<eoh>", "<eoa>")) -> sentencepiece.SentencePieceProcessor:
    """A small sentencepiece model in the InternLM v1 style (no dummy prefix, byte fallback, ``markers`` as pieces)."""
    sentencepiece.SentencePieceTrainer.train(
        input=str(DEMO_CORPUS),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=1200,
        hard_vocab_limit=False,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=[*markers, "\n"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.vocab").unlink()
    return sentencepiece.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))


def write_demo_chat_model(out_dir: Path) -> None:
    """Write a complete InternLM v1 folder (config, tokenizer, weights) into ``out_dir``."""
    processor = train_demo_tokenizer(out_dir)
    vocab = processor.get_piece_size()
    dims = DEMO_DIMS
    config = {
        "architectures": ["InternLMForCausalLM"], "model_type": "internlm", "bias": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "torch_dtype": "float32", "vocab_size": vocab, "internlm_demo_tiny": True, **dims,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
         "tokenizer_class": "InternLMTokenizer"}, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
    state = random_v1_state_dict(vocab, **dims)
    steer_replies(state["model.embed_tokens.weight"], state["lm_head.weight"], processor, "<eoa>", "<eoh>")
    torch.save(state, out_dir / "pytorch_model.bin")


def steer_replies(embeddings: torch.Tensor, head: torch.Tensor, processor, end_of_reply: str, end_of_query: str) -> None:
    """Make a random model's replies end after a few dozen tokens and avoid lone bytes (in place).

    Random weights alone ramble for the whole token budget in stray bytes. One embedding dimension
    is made a constant so that the head can carry a bias on it: towards ``end_of_reply`` and away
    from byte, control and unknown pieces and ``end_of_query``.
    """
    unwanted = [i for i in range(processor.get_piece_size())
                if processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i)]
    unwanted.append(processor.piece_to_id(end_of_query))
    embeddings[:, 0] = DEMO_BIAS_FEATURE
    head[:, 0] = 0.0
    head[processor.piece_to_id(end_of_reply), 0] = DEMO_END_BIAS
    head[unwanted, 0] = -DEMO_END_BIAS * 4


def random_v1_state_dict(vocab: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                         num_attention_heads: int) -> dict[str, torch.Tensor]:
    """Random InternLM v1 weights under the original tensor names."""
    generator = torch.Generator().manual_seed(DEMO_SEED)

    def rand(*shape, scale=0.02):
        return torch.randn(*shape, generator=generator) * scale

    state = {"model.embed_tokens.weight": rand(vocab, hidden_size, scale=1.0)}
    for i in range(num_hidden_layers):
        prefix = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{prefix}self_attn.{proj}.weight"] = rand(hidden_size, hidden_size, scale=hidden_size**-0.5)
            state[f"{prefix}self_attn.{proj}.bias"] = rand(hidden_size)
        state[f"{prefix}mlp.gate_proj.weight"] = rand(intermediate_size, hidden_size, scale=hidden_size**-0.5)
        state[f"{prefix}mlp.up_proj.weight"] = rand(intermediate_size, hidden_size, scale=hidden_size**-0.5)
        state[f"{prefix}mlp.down_proj.weight"] = rand(hidden_size, intermediate_size, scale=intermediate_size**-0.5)
        state[f"{prefix}input_layernorm.weight"] = torch.ones(hidden_size)
        state[f"{prefix}post_attention_layernorm.weight"] = torch.ones(hidden_size)
    state["model.norm.weight"] = torch.ones(hidden_size)
    state["lm_head.weight"] = rand(vocab, hidden_size, scale=hidden_size**-0.5)
    return state


def ensure_generated(name: str, writer) -> Path:
    """The cached folder ``name``, written by ``writer(folder)`` once, atomically."""
    folder = cache_root() / f"{name}-v{DEMO_VERSION}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        writer(staging)
        staging.rename(folder)
    except OSError:
        if not (folder / "config.json").is_file():  # another process did not win the race either
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def ensure_demo_model() -> Path:
    """Folder of the embedded InternLM v1 demo chat model, generated on first use."""
    return ensure_generated("demo-internlm-chat", write_demo_chat_model)
