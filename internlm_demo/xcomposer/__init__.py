"""InternLM-XComposer v1 on current transformers: image understanding, chat and the demo's prompts."""

from .decoding import GenerationSettings
from .loading import load_xcomposer
from .model import CONVERSATION_DEFAULTS, ImageChoice, XComposer
from .preprocess import ImageRejectedError, load_image, pixel_values
from .prompts import Exchange, Turn

__all__ = [
    "CONVERSATION_DEFAULTS",
    "Exchange",
    "GenerationSettings",
    "ImageChoice",
    "ImageRejectedError",
    "Turn",
    "XComposer",
    "load_image",
    "load_xcomposer",
    "pixel_values",
]
