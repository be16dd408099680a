"""The transformers internals in ``internlm_demo/models/transformers_compat.py``, checked on a tiny random Llama.

When one of these fails after a transformers upgrade, the message names what changed; adapt that module
(and only it), then widen the range in requirements.txt.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from transformers import LlamaForCausalLM

from internlm_demo.models import transformers_compat as compat
from tests.conftest import REPO

THETA = 50_000.0
HEAD_DIM = 8
WINDOW = 16
SHAPE = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": HEAD_DIM, "max_position_embeddings": WINDOW}
CHANGED = "transformers {version} changed {what}; adapt internlm_demo/models/transformers_compat.py."


def changed(what: str) -> str:
    return CHANGED.format(version=importlib.metadata.version("transformers"), what=what)


def tiny_llama(rope: dict) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(compat.llama_config(rope, **SHAPE)).eval()


def expected_inv_freq(theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)


def test_installed_transformers_is_in_the_tested_range():
    line = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("transformers"))
    tested = SpecifierSet(re.sub(r"^transformers", "", line.split("#")[0]).strip())
    installed = Version(importlib.metadata.version("transformers"))
    assert installed in tested, (f"transformers {installed} is outside the tested range {tested} of requirements.txt; "
                                 "run tests/test_transformers_compat.py on it and update the range.")


def test_forward_takes_the_arguments_we_pass():
    parameters = inspect.signature(LlamaForCausalLM.forward).parameters
    for name in (compat.CACHE_ARGUMENT, "position_ids", "inputs_embeds", "use_cache", "logits_to_keep"):
        assert name in parameters, changed(f"LlamaForCausalLM.forward: it no longer takes {name!r}")


def test_a_cached_decode_step_equals_the_full_forward():
    model = tiny_llama({"rope_type": "default", "rope_theta": THETA})
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, -1]
        cache = compat.new_cache(model.config)
        model(input_ids=ids[:, :-1], position_ids=torch.arange(5)[None], use_cache=True, **{compat.CACHE_ARGUMENT: cache})
        assert cache.get_seq_length() == 5, changed(f"the KV cache passed as {compat.CACHE_ARGUMENT!r}: it was not filled")
        step = model(input_ids=ids[:, -1:], position_ids=torch.tensor([[5]]), use_cache=True,
                     **{compat.CACHE_ARGUMENT: cache}).logits[0, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5, msg=changed("DynamicCache(config=...)"))


def test_the_rotary_module_and_its_attributes():
    model = tiny_llama({"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0})
    assert dict(model.named_modules()).get(compat.ROTARY_MODULE) is model.model.rotary_emb, \
        changed(f"where the rotary embedding lives (expected the module {compat.ROTARY_MODULE})")
    rotary = model.model.rotary_emb
    for name in ("inv_freq", "original_inv_freq", "attention_scaling", "rope_type", "max_seq_len_cached",
                 "original_max_seq_len"):
        assert hasattr(rotary, name), changed(f"the rotary embedding: it has no attribute {name!r}")
    assert "dynamic" in str(rotary.rope_type), changed("rotary_emb.rope_type for a dynamic rope")
    assert rotary.original_max_seq_len == WINDOW, changed("rotary_emb.original_max_seq_len")


def test_rope_settings_round_trip_and_give_the_standard_frequencies():
    rope = {"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0}
    model = tiny_llama(rope)
    parameters = compat.rope_parameters(model.config)
    assert {key: parameters.get(key) for key in rope} == rope, changed("LlamaConfig(rope_parameters=...)")
    inputs = compat.rope_inputs(model)
    torch.testing.assert_close(inputs.original_inv_freq, expected_inv_freq(THETA), msg=changed("rotary_emb.original_inv_freq"))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected_inv_freq(THETA), msg=changed("rotary_emb.inv_freq"))
    assert inputs.attention_scaling == 1.0, changed("rotary_emb.attention_scaling for default/dynamic ropes")


def test_reset_dynamic_rope_undoes_the_rescaling_of_a_long_sequence():
    model = tiny_llama({"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0})
    short = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        fresh = model(input_ids=short).logits
        model(input_ids=torch.arange(3 * WINDOW)[None] % 64)  # longer than the window: transformers rescales
        rotary = model.model.rotary_emb
        assert not torch.equal(rotary.inv_freq, rotary.original_inv_freq), \
            changed("dynamic NTK: a long sequence no longer rescales rotary_emb.inv_freq in place")
        compat.reset_dynamic_rope(model)
        assert rotary.max_seq_len_cached == rotary.original_max_seq_len
        torch.testing.assert_close(rotary.inv_freq, expected_inv_freq(THETA))
        torch.testing.assert_close(model(input_ids=short).logits, fresh, msg=changed("dynamic NTK's reset"))


def test_rebuild_rotary_uses_the_stored_frequencies():
    with torch.device("meta"):
        model = LlamaForCausalLM(compat.llama_config({"rope_type": "default", "rope_theta": THETA}, **SHAPE))
    stored = expected_inv_freq(THETA).half()  # the originals stored inv_freq rounded to float16
    compat.rebuild_rotary(model, "cpu", stored)
    rotary = model.model.rotary_emb
    for name in ("inv_freq", "original_inv_freq"):
        buffer = getattr(rotary, name)
        assert buffer.device.type == "cpu" and buffer.dtype == torch.float32
        assert torch.equal(buffer, stored.float()), changed(f"rotary_emb.{name} after rebuilding the module")
