"""Bad model folders fail with one readable line that names the file and the fix."""

from __future__ import annotations

import json

import pytest
import torch

from internlm_demo import ModelFolderError, load_chat_model
from tests.conftest import copy_fixture


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
