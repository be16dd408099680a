"""bench/decode.py on the CPU: the modes that a GPU run depends on still run end to end."""

from __future__ import annotations

import importlib.util
import json

import torch

from internlm_demo.models.loading import load_model
from tests.conftest import FIXTURES_DIR, REPO

spec = importlib.util.spec_from_file_location("bench_decode", REPO / "bench" / "decode.py")
decode = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decode)


def test_agreement_mode_compares_the_engine_and_transformers_with_float32(tmp_path):
    out = tmp_path / "agreement.json"
    decode.main(["--model", "tiny2", "--device", "cpu", "--dtype", "bfloat16", "--modes", "agreement",
                 "--agreement-tokens", "8", "--workdir", str(tmp_path), "--out", str(out)])
    agreement = json.loads(out.read_text())["agreement"]
    assert "error" not in agreement, agreement
    assert agreement["positions"] == 8
    assert agreement["dtype"] == "bfloat16"
    assert agreement["float32_placement"] == "cpu"
    for key in ("engine_vs_float32", "transformers_vs_float32", "engine_vs_transformers"):
        assert 0 <= agreement[key] <= 1
        assert agreement[key] * 8 == round(agreement[key] * 8)  # a count of the 8 positions
    assert agreement["float32_top2_gap_median"] >= 0


def test_streamed_decoder_layers_compute_what_a_float32_load_does():
    """The fixture's weights are stored in bfloat16: held so and streamed in float32, the logits are a
    float32 load's, bit for bit, and each layer is back in bfloat16 afterwards."""
    folder = FIXTURES_DIR / "internlm2-chat-7b-tiny"
    ids = torch.tensor([[1, 333, 444, 555, 666, 777]])
    with torch.inference_mode():
        whole = load_model(folder, device="cpu", dtype="float32", progress=False).model
        expected = whole(input_ids=ids, use_cache=False).logits
        held = load_model(folder, device="cpu", dtype="bfloat16", progress=False).model
        decode.stream_decoder_layers(held, "cpu")
        streamed = held(input_ids=ids, use_cache=False).logits
    assert streamed.dtype == torch.float32
    assert torch.equal(expected, streamed)
    assert all(p.dtype == torch.bfloat16 for p in held.model.layers.parameters())
