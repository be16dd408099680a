"""The embedded XComposer demo model: a tiny random checkpoint in the original on-disk format.

It exists so that the XComposer app starts without the 18 GB download; its replies are noise and
it is labelled as a demo wherever it appears. It is written once into the cache and then loaded
through the very same ``load_xcomposer`` as a real folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.demo import ensure_generated, steer_replies, train_demo_tokenizer
from .prompts import EOA, EOH

DEMO_SEED = 20231002


@dataclass(frozen=True)
class XComposerDims:
    """Sizes of an XComposer v1 checkpoint; the defaults are the embedded demo's tiny ones."""

    vision: dict = field(default_factory=lambda: {
        "img_size": 224, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "intermediate_size": 64,
    })
    qformer: dict = field(default_factory=lambda: {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "cross_attention_freq": 2, "encoder_width": 32,
    })
    llm: dict = field(default_factory=lambda: {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    })
    num_query_token: int = 4
    lora: dict = field(default_factory=lambda: {
        "freeze": False, "learn_param": ["q", "v", "ffn"], "lora_alpha": 8, "lora_dropout": 0.05, "lora_r": 4,
    })


# internlm-xcomposer-7b: EVA ViT-g/14, a BERT-base Q-Former with 64 queries, InternLM-7B with rank-256 LoRA.
REAL_DIMS = XComposerDims(
    vision={"img_size": 224, "patch_size": 14, "embed_dim": 1408, "depth": 39, "num_heads": 16, "mlp_ratio": 4.3637,
            "intermediate_size": 6144},
    qformer={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "cross_attention_freq": 2, "encoder_width": 1408},
    llm={"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    num_query_token=64,
    lora={"freeze": False, "learn_param": ["q", "v", "ffn"], "lora_alpha": 256, "lora_dropout": 0.05, "lora_r": 256},
)
# The original tokenizer_config.json of internlm-xcomposer-7b, minus its auto_map.
TOKENIZER_CONFIG = {
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "pad_token": "</s>",
    "tokenizer_class": "InternLMXComposerTokenizer",
    "unk_token": "<unk>",
}


def demo_config(vocab_size: int, dims: XComposerDims = XComposerDims()) -> dict:
    """config.json with the real file's keys; sizes other than the real ones go in ``tiny_dims``."""
    config = {
        "architectures": ["InternLMXComposerForCausalLM"],
        "model_type": "InternLMXComposer",
        "bias": True,
        "kqvo_bias": True,
        "intern_converted_llm": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": -1,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
        "num_query_token": dims.num_query_token,
        "internlm_lora": dims.lora,
        "lora_cfg": dims.lora,
        "device": "cuda",
        **dims.llm,
    }
    if dims != REAL_DIMS:
        config.update(tiny_dims={"vision": dims.vision, "qformer": dims.qformer}, internlm_demo_tiny=True)
    return config


class RandomTensors:
    """Draws the demo's parameters, scaled so that a tiny random network still gives varied outputs."""

    def __init__(self, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device, self.dtype = device, dtype

    def normal(self, *shape, scale: float = 1.0) -> torch.Tensor:
        values = torch.randn(*shape, generator=self.generator, device=self.device, dtype=self.dtype) * scale
        return values.cpu()

    def linear(self, out_features: int, in_features: int) -> torch.Tensor:
        return self.normal(out_features, in_features, scale=in_features**-0.5)

    def bias(self, size: int) -> torch.Tensor:
        return self.normal(size, scale=0.1)

    def norm(self, size: int) -> torch.Tensor:
        return 1 + self.normal(size, scale=0.1)


def random_xcomposer_state_dict(vocab_size: int, dims: XComposerDims = XComposerDims(),
                                draw: RandomTensors | None = None) -> dict[str, torch.Tensor]:
    """Random weights under the original tensor names (ViT, Q-Former, projection, InternLM with LoRA)."""
    draw = draw or RandomTensors(DEMO_SEED)
    state: dict[str, torch.Tensor] = {}
    width, mlp, patch = dims.vision["embed_dim"], dims.vision["intermediate_size"], dims.vision["patch_size"]
    positions = (dims.vision["img_size"] // patch) ** 2 + 1
    state["visual_encoder.cls_token"] = draw.normal(1, 1, width)
    state["visual_encoder.pos_embed"] = draw.normal(1, positions, width)
    state["visual_encoder.patch_embed.proj.weight"] = draw.normal(
        width, 3, patch, patch, scale=(3 * patch * patch) ** -0.5
    )
    state["visual_encoder.patch_embed.proj.bias"] = draw.bias(width)
    for i in range(dims.vision["depth"]):
        block = f"visual_encoder.blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[f"{block}{norm}.weight"], state[f"{block}{norm}.bias"] = draw.norm(width), draw.bias(width)
        state[f"{block}attn.qkv.weight"] = draw.linear(3 * width, width)
        state[f"{block}attn.q_bias"], state[f"{block}attn.v_bias"] = draw.bias(width), draw.bias(width)
        state[f"{block}attn.proj.weight"], state[f"{block}attn.proj.bias"] = draw.linear(width, width), draw.bias(width)
        state[f"{block}mlp.fc1.weight"], state[f"{block}mlp.fc1.bias"] = draw.linear(mlp, width), draw.bias(mlp)
        state[f"{block}mlp.fc2.weight"], state[f"{block}mlp.fc2.bias"] = draw.linear(width, mlp), draw.bias(width)
    state["ln_vision.weight"], state["ln_vision.bias"] = draw.norm(width), draw.bias(width)

    hidden, inner = dims.qformer["hidden_size"], dims.qformer["intermediate_size"]
    bert = "Qformer.bert."
    state[f"{bert}embeddings.LayerNorm.weight"], state[f"{bert}embeddings.LayerNorm.bias"] = (
        draw.norm(hidden),
        draw.bias(hidden),
    )
    state[f"{bert}embeddings.position_ids"] = torch.arange(512).unsqueeze(0)

    def dense(name: str, out_features: int, in_features: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = draw.linear(out_features, in_features), draw.bias(out_features)

    def layer_norm(name: str, size: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = draw.norm(size), draw.bias(size)

    for i in range(dims.qformer["num_hidden_layers"]):
        layer = f"{bert}encoder.layer.{i}."
        attentions = [("attention", hidden)]
        if i % dims.qformer["cross_attention_freq"] == 0:
            attentions.append(("crossattention", width))
        for kind, kv_width in attentions:
            dense(f"{layer}{kind}.self.query", hidden, hidden)
            dense(f"{layer}{kind}.self.key", hidden, kv_width)
            dense(f"{layer}{kind}.self.value", hidden, kv_width)
            dense(f"{layer}{kind}.output.dense", hidden, hidden)
            layer_norm(f"{layer}{kind}.output.LayerNorm", hidden)
        dense(f"{layer}intermediate_query.dense", inner, hidden)
        dense(f"{layer}output_query.dense", hidden, inner)
        layer_norm(f"{layer}output_query.LayerNorm", hidden)
    llm_width = dims.llm["hidden_size"]
    state["query_tokens"] = draw.normal(1, dims.num_query_token, hidden)
    dense("internlm_proj", llm_width, hidden)
    state["flag_image_start"], state["flag_image_end"] = draw.normal(1, 1, llm_width), draw.normal(1, 1, llm_width)

    llm = "internlm_model.model."
    head_dim = llm_width // dims.llm["num_attention_heads"]
    ffn, rank = dims.llm["intermediate_size"], dims.lora["lora_r"]
    state[f"{llm}embed_tokens.weight"] = draw.normal(vocab_size, llm_width)
    for i in range(dims.llm["num_hidden_layers"]):
        layer = f"{llm}layers.{i}."
        state[f"{layer}input_layernorm.weight"] = draw.norm(llm_width)
        state[f"{layer}post_attention_layernorm.weight"] = draw.norm(llm_width)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            dense(f"{layer}self_attn.{proj}", llm_width, llm_width)
        state[f"{layer}self_attn.rotary_emb.inv_freq"] = (
            1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        ).half()
        state[f"{layer}mlp.gate_proj.weight"] = draw.linear(ffn, llm_width)
        state[f"{layer}mlp.up_proj.weight"] = draw.linear(ffn, llm_width)
        state[f"{layer}mlp.down_proj.weight"] = draw.linear(llm_width, ffn)
        for module, (out_features, in_features) in {
            "self_attn.q_proj": (llm_width, llm_width),
            "self_attn.v_proj": (llm_width, llm_width),
            "mlp.up_proj": (ffn, llm_width),
            "mlp.down_proj": (llm_width, ffn),
        }.items():
            state[f"{layer}{module}.lora_A.weight"] = draw.linear(rank, in_features)
            state[f"{layer}{module}.lora_B.weight"] = draw.linear(out_features, rank) * 0.1
    state[f"{llm}norm.weight"] = draw.norm(llm_width)
    state["internlm_model.lm_head.weight"] = draw.linear(vocab_size, llm_width)
    return state


def write_demo_xcomposer(out_dir: Path) -> None:
    """Write a complete XComposer v1 folder (config, tokenizer, weights) into ``out_dir``."""
    processor = train_demo_tokenizer(out_dir, markers=(EOH, EOA))
    vocab_size = processor.get_piece_size()
    (out_dir / "config.json").write_text(json.dumps(demo_config(vocab_size), indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    state = random_xcomposer_state_dict(vocab_size)
    steer_replies(state["internlm_model.model.embed_tokens.weight"], state["internlm_model.lm_head.weight"], processor,
                  EOA, EOH)
    torch.save(state, out_dir / "pytorch_model.bin")


def ensure_demo_xcomposer() -> Path:
    """Folder of the embedded XComposer demo model, generated on first use."""
    return ensure_generated("demo-internlm-xcomposer", write_demo_xcomposer)
