"""An InternLM3 checkpoint made here loads through the public API and matches transformers' own InternLM3."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, InternLM3Config

from internlm_demo import load_chat_model
from tests.conftest import FIXTURES_DIR

TINY_INTERNLM3 = {
    "architectures": ["InternLM3ForCausalLM"],
    "model_type": "internlm3",
    "bias": False,
    "qkv_bias": False,
    "head_dim": 16,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 64,
    "rope_scaling": {"factor": 2.0, "rope_type": "dynamic"},
    "rope_theta": 50000000,
    "rms_norm_eps": 1e-5,
    "vocab_size": 92544,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


@pytest.fixture(scope="module")
def internlm3_folder(tmp_path_factory):
    """A tiny InternLM3 folder written by transformers' own InternLM3 classes (InternLM2's tokenizer)."""
    folder = tmp_path_factory.mktemp("internlm3-tiny")
    torch.manual_seed(3)
    config = InternLM3Config(**{k: v for k, v in TINY_INTERNLM3.items() if k not in ("architectures", "model_type")})
    reference = AutoModelForCausalLM.from_config(config).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(TINY_INTERNLM3))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(FIXTURES_DIR / "internlm2-chat-7b-tiny" / name, folder / name)
    return folder, reference


def test_internlm3_logits_match_transformers(internlm3_folder):
    folder, reference = internlm3_folder
    model = load_chat_model(folder, device="cpu", dtype="float32", progress=False)
    assert model.family.name == "internlm3"
    ids = model.tokenizer.encode(model.build_prompt("你好, InternLM3!", []))
    assert len(ids) > TINY_INTERNLM3["max_position_embeddings"], "the prompt should exercise dynamic NTK"
    with torch.inference_mode():
        ours = model.model(torch.tensor([ids])).logits
        theirs = reference(torch.tensor([ids])).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_internlm3_chats(internlm3_folder):
    folder, _ = internlm3_folder
    model = load_chat_model(folder, device="cpu", dtype="float32", progress=False)
    prompt = model.build_prompt("Hi", [])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    response, history = model.chat("Hi", [], do_sample=False, max_new_tokens=8)
    assert history == [("Hi", response)]
    assert model.tokenizer.token_id("<|im_end|>") in model.stop_ids
