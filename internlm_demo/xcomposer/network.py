"""XComposer v1's image side built from transformers' BLIP-2 parts.

EVA ViT-g/14 is a BLIP-2 vision model without the final LayerNorm; the perceive sampler is a BLIP-2
Q-Former that keeps only its query-side feed-forward. Their outputs become ``num_query_token``
language-model embeddings framed by the learned ``flag_image_start`` / ``flag_image_end``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

# Hyperparameters fixed by the original code; a fixture's ``tiny_dims`` may override the sizes.
EVA_VIT_G = {"img_size": 224, "patch_size": 14, "embed_dim": 1408, "depth": 39, "num_heads": 16, "mlp_ratio": 4.3637}
BERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "cross_attention_freq": 2,
}
VIT_LAYER_NORM_EPS = 1e-6
LN_VISION_EPS = 1e-5
QFORMER_LAYER_NORM_EPS = 1e-12


def vision_config_for(config: dict) -> Blip2VisionConfig:
    """The EVA ViT-g of an original ``config.json`` (real sizes unless ``tiny_dims.vision`` says otherwise)."""
    dims = {**EVA_VIT_G, **((config.get("tiny_dims") or {}).get("vision") or {})}
    return Blip2VisionConfig(
        hidden_size=dims["embed_dim"],
        intermediate_size=int(dims["embed_dim"] * dims["mlp_ratio"]),
        num_hidden_layers=dims["depth"],
        num_attention_heads=dims["num_heads"],
        image_size=dims["img_size"],
        patch_size=dims["patch_size"],
        hidden_act="gelu",
        layer_norm_eps=VIT_LAYER_NORM_EPS,
        qkv_bias=True,
    )


def qformer_config_for(config: dict, vision_width: int) -> Blip2QFormerConfig:
    """The perceive sampler of an original ``config.json``: BERT-base sizes unless ``tiny_dims.qformer`` says otherwise."""
    dims = {**BERT_BASE, **((config.get("tiny_dims") or {}).get("qformer") or {})}
    return Blip2QFormerConfig(
        hidden_size=dims["hidden_size"],
        num_hidden_layers=dims["num_hidden_layers"],
        num_attention_heads=dims["num_attention_heads"],
        intermediate_size=dims["intermediate_size"],
        cross_attention_frequency=dims["cross_attention_freq"],
        encoder_hidden_size=vision_width,
        hidden_act="gelu",
        layer_norm_eps=QFORMER_LAYER_NORM_EPS,
        use_qformer_text_input=False,
    )


class ImageEncoder(nn.Module):
    """Pixels → ``num_query_token + 2`` embeddings in the language model's space."""

    def __init__(
        self, vision: Blip2VisionConfig, qformer: Blip2QFormerConfig, num_query_token: int, llm_hidden_size: int
    ):
        super().__init__()
        self.visual_encoder = Blip2VisionModel(vision)
        self.visual_encoder.post_layernorm = nn.Identity()  # EVA's blocks end without a norm; ln_vision follows
        self.ln_vision = nn.LayerNorm(vision.hidden_size, eps=LN_VISION_EPS)
        self.qformer = Blip2QFormerModel(qformer)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_token, qformer.hidden_size))
        self.internlm_proj = nn.Linear(qformer.hidden_size, llm_hidden_size)
        self.flag_image_start = nn.Parameter(torch.zeros(1, 1, llm_hidden_size))
        self.flag_image_end = nn.Parameter(torch.zeros(1, 1, llm_hidden_size))

    @property
    def num_embeds(self) -> int:
        """Positions one image takes in the prompt."""
        return self.query_tokens.shape[1] + 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision_weight = self.visual_encoder.embeddings.patch_embedding.weight
        features = self.visual_encoder(pixel_values.to(vision_weight.device, vision_weight.dtype)).last_hidden_state
        bridge_dtype = self.ln_vision.weight.dtype
        features = self.ln_vision(features.to(bridge_dtype))
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        queried = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        projected = self.internlm_proj(queried)
        batch = projected.shape[0]
        return torch.cat(
            [self.flag_image_start.expand(batch, -1, -1), projected, self.flag_image_end.expand(batch, -1, -1)], dim=1
        )
