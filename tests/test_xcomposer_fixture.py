"""The XComposer v1 fixture reproduces what the original remote code produced (float32, CPU)."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import LlamaForCausalLM

from internlm_demo.errors import ModelFolderError
from internlm_demo.models.families import INTERNLM
from internlm_demo.models.loading import choose_device, llama_config_for
from internlm_demo.models.placement import model_blocks
from internlm_demo.xcomposer import Exchange, load_xcomposer
from internlm_demo.xcomposer.checkpoint import LoraSpec, image_tensors, lora_spec_for, merge_lora
from internlm_demo.xcomposer.decoding import Decoder, GenerationSettings
from internlm_demo.xcomposer.loading import build_image_encoder, image_encoder_dtype, plan_xcomposer_devices
from internlm_demo.xcomposer.preprocess import image_to_pixels
from internlm_demo.xcomposer.prompts import (
    ANSWER_CUE,
    BOT,
    META_INSTRUCTION,
    USER,
    Text,
    align_text,
    chat_segments,
    conversation_prompt,
    conversation_segments,
    select_image_text,
)
from tests.conftest import FIXTURES_DIR, reference

NAME = "internlm-xcomposer-7b-tiny"
REF = reference(NAME)
CONFIG = json.loads((FIXTURES_DIR / NAME / "config.json").read_text(encoding="utf-8"))
CHAT_CASES = [case for case in REF["chat_cases"] if case["api"] == "model.chat"]
HISTORY_ENTRIES = [case["runs"]["greedy"]["history_entry_appended"] for case in CHAT_CASES]
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
    return load_xcomposer(FIXTURES_DIR / NAME, device="cpu", dtype="float32", progress=False)


def stats(tensor: torch.Tensor) -> dict:
    flat = tensor.detach().float().flatten()
    return {
        "shape": list(tensor.shape),
        "mean": flat.mean().item(),
        "std": flat.std().item(),
        "l2_norm": flat.norm().item(),
        "first8": flat[:8].tolist(),
    }


def assert_stats(tensor: torch.Tensor, expected: dict, tolerance: float = 1e-5):
    got = stats(tensor)
    assert got["shape"] == expected["shape"]
    for key in ("mean", "std", "l2_norm"):
        assert got[key] == pytest.approx(expected[key], rel=tolerance, abs=tolerance), key
    assert got["first8"] == pytest.approx(expected["first8"], rel=tolerance, abs=tolerance)


def fixture_image(name: str) -> str:
    return str(FIXTURES_DIR / name)


@pytest.mark.parametrize("image_name", sorted(REF["pixel_values"]))
def test_pixel_values_are_bit_identical(image_name):
    expected = REF["pixel_values"][image_name]
    pixels = image_to_pixels(fixture_image(image_name))
    assert Image.open(fixture_image(image_name)).size == tuple(expected["source_size_wh"])
    assert_stats(pixels, expected)
    assert hashlib.sha256(pixels.numpy().astype("<f4").tobytes()).hexdigest() == expected["sha256_float32_le"]


@pytest.mark.parametrize("image_name", sorted(REF["encode_img"]))
def test_encode_image_and_its_intermediates(model, image_name):
    expected = REF["encode_img"][image_name]
    pixels = image_to_pixels(fixture_image(image_name))
    encoder = model.image_encoder
    with torch.no_grad():
        vit = encoder.visual_encoder(pixels).last_hidden_state
        normed = encoder.ln_vision(vit)
        queried = encoder.qformer(query_embeds=encoder.query_tokens, encoder_hidden_states=normed).last_hidden_state
    intermediates = expected["intermediates"]
    assert_stats(vit, intermediates["visual_encoder_out(before ln_vision)"])
    assert_stats(normed, intermediates["ln_vision_out"])
    assert_stats(queried, intermediates["qformer_last_hidden_state"])
    assert_stats(model.encode_image(fixture_image(image_name)), expected)


def test_constants_and_stored_rotary_frequencies(model):
    checks = REF["sensitivity_checks"]
    templates = REF["demo_templates"]
    assert META_INSTRUCTION == templates["meta_instruction"]
    assert templates["model_chat_generate"]["no_history_segments"] == [META_INSTRUCTION + USER, ANSWER_CUE]
    assert templates["model_chat_generate"]["history_entry_segments"] == [USER, BOT]
    assert list(model.stop_ids) == templates["model_chat_generate"]["stop_ids"]
    assert model.llm.model.rotary_emb.inv_freq.tolist() == checks["inv_freq_used_by_original"]
    assert model.image_encoder.ln_vision.eps == 1e-5
    assert lora_spec_for(CONFIG) == LoraSpec(
        targets=("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj"), scaling=checks["lora_scaling"]
    )


@pytest.mark.parametrize("sample", REF["tokenizer"]["samples"], ids=lambda s: s["text"][:12])
def test_tokenizer_samples(model, sample):
    assert model.tokenizer.encode(sample["text"], add_special_tokens=sample["add_special_tokens"]) == sample["ids"]


@pytest.fixture(scope="module")
def chat_histories(model):
    """The history each chat case starts from, built by running the earlier chat cases in order."""
    histories, history = {}, None
    for case in CHAT_CASES:
        histories[case["name"]] = history
        run = case["runs"]["greedy"]["gen_kwargs_effective"]
        image = fixture_image(case["image"]) if case["image"] else None
        _, history = model.chat(
            case["text"],
            image,
            history,
            num_beams=run["num_beams"],
            repetition_penalty=run["repetition_penalty"],
            max_new_tokens=run["max_new_tokens"],
        )
    return histories


def chat_runs():
    return [
        pytest.param(case, run_name, id=f"{case['name']}-{run_name}")
        for case in REF["chat_cases"]
        for run_name in case["runs"]
    ]


def text_ids(model, segments) -> list[list[int]]:
    return [model.tokens(s) for s in segments if isinstance(s, Text)]


@pytest.mark.parametrize(("case", "run_name"), chat_runs())
def test_chat_case(model, chat_histories, case, run_name):
    run = case["runs"][run_name]
    history = chat_histories.get(case["name"])
    image = model.encode_image(fixture_image(case["image"])) if case["image"] else None
    segments = chat_segments(case["text"], image, history)
    expected_text_ids = [part["token_ids"] for part in run["prompt_layout"] if part["kind"] == "text"]
    assert text_ids(model, segments)[-len(expected_text_ids) :] == expected_text_ids
    for turn, entry in zip(history or [], HISTORY_ENTRIES):
        assert text_ids(model, chat_segments("", None, [turn])[:-3]) == [
            part["token_ids"] for part in entry if part["kind"] in ("text", "ids")
        ]
    embeds = model.embed(segments)
    assert embeds.shape[1] == run["prompt_len"] == model.count_positions(segments)
    assert_stats(embeds, run["prompt_embeds_stats"])

    logits = model.next_token_logits(embeds)
    top10 = torch.topk(logits, 10)
    assert top10.indices.tolist() == [token for token, _ in run["next_token_top10"]]
    assert top10.values.tolist() == pytest.approx([value for _, value in run["next_token_top10"]], abs=LOGIT_TOLERANCE)
    assert logits.norm().item() == pytest.approx(run["next_token_logits_l2"], rel=1e-5)

    kwargs = run["gen_kwargs_effective"]
    decoder = model.decoder(
        embeds,
        num_beams=kwargs["num_beams"],
        do_sample=kwargs["do_sample"],
        repetition_penalty=kwargs["repetition_penalty"],
        max_new_tokens=kwargs["max_new_tokens"],
    )
    assert decoder.run() == run["generate_output_ids"]
    assert model.response_text(decoder.output_ids) == run["response"]
    if "beam_sequences_score" in run:
        assert decoder.score == pytest.approx(run["beam_sequences_score"], abs=1e-5)


def test_chat_returns_history_with_retokenized_reply(model, chat_histories):
    last = CHAT_CASES[-1]
    history = chat_histories[last["name"]]
    assert [turn.text for turn in history] == [case["text"] for case in CHAT_CASES[:-1]]
    response, new_history = model.chat(
        last["text"], fixture_image(last["image"]), history, num_beams=1, max_new_tokens=10
    )
    assert response == last["runs"]["greedy"]["response"]
    assert len(new_history) == last["runs"]["greedy"]["history_len_after"] and new_history[:-1] == history
    assert new_history[-1].image is not None and new_history[-1].response == response


def test_stream_chat_ends_with_the_chat_response(model):
    case = REF["chat_cases"][0]
    run = case["runs"]["greedy"]
    streamed = list(model.stream_chat(case["text"], fixture_image(case["image"]), num_beams=1, max_new_tokens=10))
    assert streamed[-1] == run["response"]
    assert all(run["response"].startswith(partial) for partial in streamed)
    assert model.generate(case["text"], fixture_image(case["image"]), num_beams=1, max_new_tokens=10) == run["response"]


def test_web_demo_chat_tab_prompt(model):
    example = REF["demo_templates"]["chat_tab"]["example"]
    exchanges = [Exchange(text=example["text"], image=model.encode_image(fixture_image(example["image"])))]
    assert conversation_prompt(exchanges) == example["rendered_prompt"]
    segments = conversation_segments(exchanges)
    assert text_ids(model, segments) == example["segment_token_ids"]
    logits = model.next_token_logits(model.embed(segments))
    top10 = torch.topk(logits, 10)
    assert top10.indices.tolist() == [token for token, _ in example["next_token_top10"]]
    assert top10.values.tolist() == pytest.approx(
        [value for _, value in example["next_token_top10"]], abs=LOGIT_TOLERANCE
    )
    assert model.conversation_break_ids == (2, 333, 497)


def test_select_image_run(model):
    run = REF["select_image_run"]
    flips = {"none": None, "flip_lr": Image.FLIP_LEFT_RIGHT, "flip_tb": Image.FLIP_TOP_BOTTOM}
    candidates = []
    for candidate in run["candidates"]:
        image = Image.open(fixture_image(candidate["file"])).convert("RGB")
        candidates.append(
            image if flips[candidate["transform"]] is None else image.transpose(flips[candidate["transform"]])
        )
    caption_line = min(int(line) for line in run["caps"])
    sections = ["".join(line + "\n" for line in run["article_lines"][: caption_line + 1])]
    text = select_image_text(sections)
    assert text == run["input_text_before_align"]
    assert align_text(text) == run["input_text_after_align_text"]
    embeds = model.interleaved_embeds(align_text(text), candidates)[:, :-2]
    assert embeds.shape[1] == run["prompt_len"]
    logits = model.next_token_logits(embeds)
    assert torch.topk(logits, 5).indices.tolist() == [token for token, _ in run["next_token_top5"]]
    choice = model.select_image(sections, candidates)
    assert choice.answer == run["decoded_out_text(outputs[0][1:])"]
    assert (choice.index, choice.fell_back) == (run["selected_index"], run["fallback_used"])


class FixedLogits(torch.nn.Module):
    """A stand-in language model that always predicts the same logits."""

    def __init__(self, logits: torch.Tensor, config):
        super().__init__()
        self.logits, self.config = logits, config

    def forward(self, inputs_embeds=None, input_ids=None, **_):
        rows = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
        return SimpleNamespace(logits=self.logits.expand(rows, 1, -1))


def test_repetition_penalty_sees_the_bos_placeholder_and_stops_end_silently(model):
    vocab = model.llm.config.vocab_size
    logits = torch.zeros(vocab)
    logits[1], logits[5] = 2.0, 1.5  # BOS is the favourite unless the penalty counts the placeholder
    decoder = Decoder(
        FixedLogits(logits, model.llm.config),
        torch.zeros(1, 3, 8),
        GenerationSettings(max_new_tokens=1, num_beams=1, repetition_penalty=1.5),
        bos_id=1,
        eos_id=2,
    )
    assert decoder.run() == [1, 5]
    assert GenerationSettings(max_new_tokens=1, repetition_penalty=1.0).repetition_penalty == 1.0
    logits[model.stop_ids[1]] = 9.0
    decoder = Decoder(
        FixedLogits(logits, model.llm.config),
        torch.zeros(1, 3, 8),
        GenerationSettings(max_new_tokens=5, num_beams=1),
        bos_id=1,
        eos_id=2,
        stop_ids=model.stop_ids,
    )
    assert list(decoder.steps()) == [] and decoder.output_ids == [1, model.stop_ids[1]]


def test_max_length_counts_the_bos_placeholder():
    assert GenerationSettings.from_kwargs({"max_length": 10}).max_new_tokens == 9
    assert GenerationSettings.from_kwargs({"max_length": 10, "max_new_tokens": 4}).max_new_tokens == 4
    with pytest.raises(TypeError, match="unknown generation arguments: beam"):
        GenerationSettings.from_kwargs({"beam": 3})


# --- placement and checkpoint mapping (no GPU needed) -------------------------------------------

REAL_XCOMPOSER_CONFIG = {  # internlm-xcomposer-7b's config.json sizes (no tiny_dims: the real ViT/Q-Former)
    "model_type": "InternLMXComposer",
    "vocab_size": 103168,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "bias": True,
    "rms_norm_eps": 1e-5,
    "num_query_token": 64,
    "max_position_embeddings": 2048,
}


@pytest.mark.parametrize("num_gpus", [2, 3, 4, 8])
def test_num_gpus_plan_puts_image_side_and_embeddings_on_gpu0_and_balances_layers(num_gpus):
    llm_config = llama_config_for(INTERNLM, REAL_XCOMPOSER_CONFIG)
    encoder = build_image_encoder(REAL_XCOMPOSER_CONFIG, llm_config.hidden_size)
    vit_params = sum(p.numel() for n, p in encoder.named_parameters() if n.startswith("visual_encoder."))
    assert 0.98e9 < vit_params < 1.02e9  # EVA ViT-g/14 has ~1.0B parameters
    image_bytes = sum(p.numel() * image_encoder_dtype(n, torch.float16).itemsize for n, p in encoder.named_parameters())
    with torch.device("meta"):
        llm = LlamaForCausalLM(llm_config)
    blocks = [(name, size // 2) for name, size in model_blocks(llm)]  # float32 meta sizes → float16
    image_gpu, plan = plan_xcomposer_devices(image_bytes, blocks, num_gpus)
    assert image_gpu == 0 and plan["model.embed_tokens"] == 0
    owners = [plan[name] for name, _ in blocks]
    assert owners == sorted(owners) and plan["lm_head"] == max(owners) < num_gpus, "contiguous, in forward order"
    loads = [sum(size for name, size in blocks if plan[name] == gpu) for gpu in range(num_gpus)]
    loads[0] += image_bytes
    total = sum(loads)
    largest = max(image_bytes + blocks[0][1], *(size for _, size in blocks))
    assert max(loads) <= total / num_gpus + largest


def test_num_gpus_without_gpus_is_a_clear_error():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has GPUs")
    with pytest.raises(ModelFolderError, match="--num-gpus 2"):
        choose_device(None, None, 2)


def test_incomplete_lora_and_bias_pairs_are_reported():
    spec = LoraSpec(targets=("self_attn.q_proj",), scaling=2.0)
    weight, down, up = torch.ones(4, 4), torch.ones(2, 4), torch.ones(4, 2)
    merged = dict(
        merge_lora(
            [
                ("m.self_attn.q_proj.weight", weight),
                ("m.self_attn.q_proj.lora_A.weight", down),
                ("m.self_attn.q_proj.lora_B.weight", up),
            ],
            spec,
            lambda _: "cpu",
        )
    )
    assert torch.equal(merged["m.self_attn.q_proj.weight"], weight + up @ down * 2.0)
    with pytest.raises(ModelFolderError, match="lacks lora_B"):
        list(
            merge_lora(
                [("m.self_attn.q_proj.weight", weight), ("m.self_attn.q_proj.lora_A.weight", down)],
                spec,
                lambda _: "cpu",
            )
        )
    with pytest.raises(ModelFolderError, match="does not list"):
        list(merge_lora([("m.mlp.gate_proj.lora_A.weight", down)], spec, lambda _: "cpu"))
    with pytest.raises(ModelFolderError, match="only one of q_bias/v_bias"):
        list(image_tensors([("visual_encoder.blocks.0.attn.q_bias", torch.zeros(4))]))


def test_a_chat_model_folder_is_refused_with_a_pointer(tmp_path):
    folder = tmp_path / "chat"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "internlm"}')
    with pytest.raises(ModelFolderError, match="not an InternLM-XComposer v1 folder"):
        load_xcomposer(folder, device="cpu", progress=False)
