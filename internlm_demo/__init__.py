"""Run InternLM, InternLM2/2.5/3 and InternLM-XComposer natively on current transformers."""

from .chat import ChatModel
from .errors import ContextOverflowError, ModelFolderError
from .generation import GenerationParams, GenerationStats
from .loading import load_chat_model

__all__ = ["ChatModel", "ContextOverflowError", "GenerationParams", "GenerationStats", "ModelFolderError", "load_chat_model"]
