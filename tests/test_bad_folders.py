"""Bad model folders fail with one readable line that names the file and the fix."""

from __future__ import annotations

import json
import time

import pytest
import torch

from internlm_demo import ModelFolderError, load_chat_model
from tests.conftest import FIXTURES_DIR, copy_fixture


def load_error(folder_or_id) -> str:
    with pytest.raises(ModelFolderError) as caught:
        load_chat_model(folder_or_id, device="cpu", dtype="float32", progress=False)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_folder_without_config(tmp_path):
    message = load_error(tmp_path)
    assert "config.json" in message and "missing" in message


def test_path_that_does_not_exist(tmp_path):
    message = load_error(tmp_path / "nope")
    assert "neither a folder nor a known model id" in message and "internlm-chat-7b" in message


def test_known_id_not_downloaded():
    message = load_error("internlm2-chat-7b")
    assert "`.venv/bin/python download.py internlm2-chat-7b`" in message


def test_unknown_model_type(tmp_path):
    folder = copy_fixture("internlm-chat-7b-tiny", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    message = load_error(folder)
    assert "'gpt2'" in message and "supported" in message


def test_shard_listed_in_index_but_missing(tmp_path):
    folder = copy_fixture("internlm-chat-7b-tiny", tmp_path)
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    message = load_error(folder)
    assert "pytorch_model-00002-of-00002.bin" in message and "download.py" in message


@pytest.mark.parametrize(("fixture", "shard"), [
    ("internlm-chat-7b-tiny", "pytorch_model-00002-of-00002.bin"),
    ("internlm2-chat-7b-tiny", "model-00002-of-00002.safetensors"),
])
def test_truncated_shard(tmp_path, fixture, shard):
    folder = copy_fixture(fixture, tmp_path)
    data = (folder / shard).read_bytes()
    (folder / shard).write_bytes(data[: len(data) // 2])
    message = load_error(folder)
    assert shard in message and "truncated or corrupt" in message


def test_tensor_of_wrong_shape(tmp_path):
    folder = copy_fixture("internlm-chat-20b-tiny", tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:, :16].clone()
    torch.save(state, folder / "pytorch_model.bin")
    message = load_error(folder)
    assert "model.layers.1.mlp.up_proj.weight" in message and "shape" in message


def test_missing_tensor(tmp_path):
    folder = copy_fixture("internlm-chat-20b-tiny", tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["model.norm.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    message = load_error(folder)
    assert "model.norm.weight" in message and "missing" in message


def test_no_tokenizer(tmp_path):
    folder = copy_fixture("internlm2-chat-7b-tiny", tmp_path)
    (folder / "tokenizer.model").unlink()
    message = load_error(folder)
    assert "tokenizer.model" in message and "missing" in message


def test_corrupt_tokenizer(tmp_path):
    folder = copy_fixture("internlm-chat-7b-tiny", tmp_path)
    (folder / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    message = load_error(folder)
    assert "tokenizer.model" in message and "cannot be read" in message


def test_python_files_in_the_folder_are_never_run(tmp_path):
    folder = copy_fixture("internlm-chat-7b-tiny", tmp_path)
    marker = tmp_path / "remote-code-ran"
    for name in ("modeling_internlm.py", "configuration_internlm.py", "tokenization_internlm.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    model = load_chat_model(folder, device="cpu", dtype="float32", progress=False)
    model.chat("hi", [], do_sample=False, max_new_tokens=2)
    assert not marker.exists()


def edit_json(path, change) -> None:
    """Apply ``change`` to the JSON document at ``path`` (a callable gets the document, anything else replaces it)."""
    document = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(change(document) if callable(change) else change))


def with_keys(**keys):
    return lambda document: {**document, **keys}


@pytest.mark.parametrize(("fixture", "file", "change", "expected"), [
    ("internlm-chat-20b-tiny", "config.json", with_keys(num_hidden_layers=1_000_000), "num_hidden_layers"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(hidden_size=10**9), "hidden_size is 1000000000"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(num_attention_heads=0), "num_attention_heads is 0"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(num_attention_heads=3), "hidden_size 32 is not a multiple"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(vocab_size=-5), "vocab_size is -5"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(vocab_size="abc"), "vocab_size is 'abc'"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(vocab_size=True), "vocab_size is True"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(rms_norm_eps=-1), "rms_norm_eps"),
    ("internlm-chat-20b-tiny", "config.json", with_keys(bias="no"), "bias is 'no'"),
    ("internlm2-chat-7b-tiny", "config.json", with_keys(rope_scaling={"type": "dynamic", "factor": float("inf")}),
     "rope_scaling.factor is inf"),
    ("internlm2-chat-7b-tiny", "config.json", with_keys(rope_scaling="dynamic"), "rope_scaling is 'dynamic'"),
    ("internlm2-chat-7b-tiny", "config.json", with_keys(rope_theta=float("nan")), "rope_theta is nan"),
    ("internlm2-chat-7b-tiny", "config.json", with_keys(num_key_value_heads=3), "num_key_value_heads"),
    ("internlm-chat-20b-tiny", "config.json", [1, 2, 3], "a JSON list, not an object"),
    ("internlm-chat-20b-tiny", "generation_config.json", "greedy", "a JSON string, not an object"),
    ("internlm-chat-20b-tiny", "generation_config.json", with_keys(eos_token_id="abc"), "eos_token_id is 'abc'"),
    ("internlm-chat-20b-tiny", "generation_config.json", with_keys(eos_token_id=[2, 10**9]), "eos_token_id"),
    ("internlm-chat-20b-tiny", "tokenizer_config.json", [], "a JSON list, not an object"),
    ("internlm-chat-20b-tiny", "tokenizer_config.json", with_keys(bos_token=5), "bos_token is 5"),
    ("internlm-chat-20b-tiny", "tokenizer_config.json", with_keys(add_bos_token="yes"), "add_bos_token is 'yes'"),
    ("internlm2-chat-7b-tiny", "tokenizer_config.json", with_keys(added_tokens_decoder={"x": {"content": "<a>"}}),
     "added_tokens_decoder"),
    ("internlm2-chat-7b-tiny", "tokenizer_config.json", with_keys(added_tokens_decoder={"92540": "<a>"}),
     "added_tokens_decoder"),
])
def test_bad_config_values_are_one_line_naming_file_and_key(tmp_path, fixture, file, change, expected):
    folder = copy_fixture(fixture, tmp_path)
    edit_json(folder / file, change)
    started = time.monotonic()
    message = load_error(folder)
    assert time.monotonic() - started < 10  # refused before anything is built
    assert file in message and expected in message, message
    assert "restore" in message or "re-download" in message


def test_a_bad_value_reads_in_chinese_with_its_file_key_and_command_as_they_are(tmp_path):
    """The error a 中文 page shows: the nested words (what the value must be, the fix) in Chinese too; str() keeps
    today's English."""
    folder = copy_fixture("internlm2-chat-7b-tiny", tmp_path)
    edit_json(folder / "config.json", with_keys(rms_norm_eps=2.0, eos_token_id=[2, "x"]))
    with pytest.raises(ModelFolderError) as caught:
        load_chat_model(folder, device="cpu", dtype="float32", progress=False)
    config, command = folder / "config.json", f"`.venv/bin/python download.py MODEL --output {folder}`"
    assert str(caught.value) == (f"{config}: rms_norm_eps is 2.0, but it must be a finite number above 0 below 1; "
                                 f"restore the original config.json (re-run {command} to fetch it again).")
    assert caught.value.text("中文") == (f"{config}：rms_norm_eps 为 2.0，但必须是大于 0 且小于 1 的有限数；"
                                         f"请恢复原始的 config.json（可运行 {command} 重新下载）。")
    edit_json(folder / "config.json", with_keys(rms_norm_eps=1e-6))
    with pytest.raises(ModelFolderError) as caught:  # a list value is shown as it is, not as words to join
        load_chat_model(folder, device="cpu", dtype="float32", progress=False)
    assert "eos_token_id is [2, 'x'], but it must be a token id from 0 to " in str(caught.value)
    assert "eos_token_id 为 [2, 'x']，但必须是从 0 到 " in caught.value.text("中文")


def rewrite_tensor(folder, name, change) -> None:
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state[name] = change(state[name])
    torch.save(state, folder / "pytorch_model.bin")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.to(torch.int8), "int8"),
    (lambda t: t > 0, "bool"),
    (lambda t: t.to(torch.complex64), "complex64"),
    (lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), "NaN or infinite"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN or infinite"),
])
def test_weights_of_the_wrong_kind_are_refused(tmp_path, change, expected):
    folder = copy_fixture("internlm-chat-20b-tiny", tmp_path)
    rewrite_tensor(folder, "model.layers.1.mlp.up_proj.weight", change)
    message = load_error(folder)
    assert "model.layers.1.mlp.up_proj.weight" in message and expected in message and "pytorch_model.bin" in message


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_malicious_pickle_is_one_line(tmp_path, capfd):
    folder = copy_fixture("internlm-chat-20b-tiny", tmp_path)
    rewrite_tensor(folder, "model.norm.weight", lambda t: RunsCode())
    message = load_error(folder)
    assert "pytorch_model.bin" in message and "not only tensors" in message and "print" in message
    assert "this must never run" not in capfd.readouterr().out


def test_xcomposer_config_is_checked_the_same_way(tmp_path):
    from internlm_demo.xcomposer import load_xcomposer

    folder = copy_fixture("internlm-xcomposer-7b-tiny", tmp_path)
    for change, expected in [(with_keys(num_hidden_layers=1_000_000), "num_hidden_layers"), ({"a": 1}, "model_type"),
                             ("x", "a JSON string, not an object")]:
        edit_json(folder / "config.json", change)
        with pytest.raises(ModelFolderError) as caught:
            load_xcomposer(folder, device="cpu", dtype="float32", progress=False)
        assert "config.json" in str(caught.value) and expected in str(caught.value) and "\n" not in str(caught.value)
        edit_json(folder / "config.json", json.loads((FIXTURES_DIR / "internlm-xcomposer-7b-tiny" / "config.json").read_text()))
