"""Run InternLM, InternLM2/2.5/3 and InternLM-XComposer natively on current transformers.

Names are imported on first use, so that light entry points (``download.py --help``) do not
pay for importing torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "ChatBackend": ".serving.backend",
    "ChatModel": ".serving.chat_model",
    "ContextOverflowError": ".errors",
    "ModelFolderError": ".errors",
    "GenerationParams": ".generation.params",
    "GenerationStats": ".generation.params",
    "load_chat_model": ".serving.chat_model",
    "load_xcomposer": ".xcomposer.loading",
    "download_model": ".models.hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'internlm_demo' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
