"""An InternLM3 checkpoint made here loads through the public API and matches transformers' own InternLM3."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, InternLM3Config

from internlm_demo import GenerationStats, load_chat_model
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


def test_internlm3_chats_as_transformers_generates(internlm3_folder):
    folder, reference = internlm3_folder
    model = load_chat_model(folder, device="cpu", dtype="float32", progress=False)
    prompt = model.build_prompt("Hi", [])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert model.tokenizer.token_id("<|im_end|>") in model.stop_ids
    # The oracle: transformers' own InternLM3 greedy-decoding the same prompt ids.
    ids = model.tokenizer.encode(prompt)
    with torch.inference_mode():
        generated = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, num_beams=1,
                                       eos_token_id=sorted(model.stop_ids), pad_token_id=2)[0, len(ids):].tolist()
    expected_ids = [token for token in generated if token not in model.stop_ids]
    stats = GenerationStats()
    for _ in model.stream_chat("Hi", [], stats=stats, do_sample=False, max_new_tokens=8):
        pass
    assert stats.output_ids == expected_ids and len(expected_ids) > 0
    response, history = model.chat("Hi", [], do_sample=False, max_new_tokens=8)
    assert response == model.tokenizer.decode(expected_ids, skip_special_tokens=True).split("<|im_end|>")[0]
    assert history == [("Hi", response)]
