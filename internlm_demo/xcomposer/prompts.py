"""XComposer v1's prompt formats as data: the model's ``chat``/``generate`` template, the web demo's
chat conversation, and the interleaved image-text prompts of its article writer.

A prompt is a list of segments: ``Text`` pieces (tokenized one by one, as the original does) and
image embeddings (tensors of shape ``(1, positions, hidden)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

META_INSTRUCTION = (
    "meta instruction\n"
    "You are an AI assistant whose name is 浦语.\n"
    "- 浦语 is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). "
    "It is designed to be helpful, honest, and harmless.\n"
    "- 浦语 can understand and communicate fluently in the language chosen by the user such as English and 中文.\n"
    "conversation\n"
)
# End of human / end of assistant. XComposer's tokenizer names pieces 103027/103028 this way.
EOH = "<TOKENS_UNUSED_0>"
EOA = "<TOKENS_UNUSED_1>"
TURN_MARKERS = re.compile(f"{re.escape(EOH)}|{re.escape(EOA)}")
USER = " <|User|>:"
BOT = " <|Bot|>:"
ANSWER_CUE = f"\n{EOH}{BOT}"
IMAGE_HERE = "<ImageHere>"
# The web demo's chat tab (demo_asset/conversation.py, CONV_VISION_7132_v2).
CHAT_ROLES = (" <|User|>", " <|Bot|>")
CHAT_SEPARATORS = (EOH, EOA)
CHAT_IMAGE = "<Img><ImageHere></Img>"
# The chat tab stops streaming when the newest token starts a role marker: '<' or ' <' (ids 333 and 497).
STREAM_BREAK_TEXTS = ("<", " <")
# The web demo's model_select_image.
SELECT_INSTRUCTION = " <|User|>:根据给定上下文和候选图像，选择合适的配图："
SELECT_QUESTION = "\n\n候选图像包括: {choices}\n\n" + EOH + " <|Bot|>:最合适的图是"
SELECT_LETTERS = "ABCD"
# interleav_wrap keeps at most this many prompt positions (before BOS).
INTERLEAVED_MAX_POSITIONS = 1680


@dataclass(frozen=True)
class Text:
    """A piece of prompt text; ``bos`` puts the BOS id in front of its tokens."""

    text: str
    bos: bool = False


Segment = Text | torch.Tensor


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of ``XComposer.chat``: the user text, its image embeddings, the reply."""

    text: str
    response: str
    image: torch.Tensor | None = None


def image_part(embeds: torch.Tensor | None) -> list[Segment]:
    return [] if embeds is None else [embeds]


def chat_segments(text: str, image: torch.Tensor | None, history: list[Turn] | None) -> list[Segment]:
    """The original ``wrap_prompt``: earlier turns, then the new one.

    Each earlier turn is ``BOS " <|User|>:" [image] text " <|Bot|>:"`` followed by the reply
    re-tokenized with its own BOS; the meta instruction only opens a conversation without history.
    """
    segments: list[Segment] = []
    for turn in history or []:
        segments += [
            Text(USER, bos=True),
            *image_part(turn.image),
            Text(turn.text),
            Text(BOT),
            Text(turn.response, bos=True),
        ]
    opening = Text(USER) if history else Text(META_INSTRUCTION + USER, bos=True)
    return [*segments, opening, *image_part(image), Text(text), Text(ANSWER_CUE)]


@dataclass(frozen=True)
class Exchange:
    """One round of the web demo's chat tab: what the user sent (with its image embeddings) and the reply."""

    text: str
    image: torch.Tensor | None = None
    response: str | None = None

    @property
    def user_message(self) -> str:
        """The message as the demo stores it: an image becomes ``<Img><ImageHere></Img>`` and a space before the text."""
        return f"{CHAT_IMAGE} {self.text}" if self.image is not None else self.text


def conversation_prompt(exchanges: list[Exchange]) -> str:
    """The demo's ``Conversation.get_prompt`` (sep style "7132"), image placeholders included."""
    prompt = META_INSTRUCTION
    messages = [message for ex in exchanges for message in (ex.user_message, ex.response)]
    for i, message in enumerate(messages):
        role = CHAT_ROLES[i % 2]
        prompt += f"{role}: {message}{CHAT_SEPARATORS[i % 2]}" if message else f"{role}:"
    return prompt


def conversation_segments(exchanges: list[Exchange]) -> list[Segment]:
    """The demo's ``get_context_emb``: the prompt split at each image, BOS only on the first piece."""
    images = [ex.image for ex in exchanges if ex.image is not None]
    pieces = conversation_prompt(exchanges).split(CHAT_IMAGE)
    segments: list[Segment] = []
    for i, piece in enumerate(pieces):
        segments.append(Text(piece, bos=i == 0))
        if i < len(images):
            segments.append(images[i])
    return segments


def align_text(text: str) -> str:
    """The demo's ``align_text``: normalise role markers, close with EOA and ``</s>``."""
    text = text + EOA + " </s>"
    for old, new in (
        ("###Human", "<|User|>"),
        ("### Human", "<|User|>"),
        ("<|User|> :", "<|User|>:"),
        ("<|User|>: ", "<|User|>:"),
        ("<|User|>", " <|User|>"),
        ("###Assistant", "<|Bot|>"),
        ("### Assistant", "<|Bot|>"),
        ("<|Bot|> :", "<|Bot|>:"),
        ("<|Bot|>: ", "<|Bot|>:"),
        ("<|Bot|>", EOH + " <|Bot|>"),
    ):
        text = text.replace(old, new)
    if text.find("<|User|>") > text.find("<|Bot|>"):
        text = text.replace(" <|User|>", EOA + " <|User|>")
    return text


def interleaved_segments(text: str, images: list[torch.Tensor]) -> list[Segment]:
    """The demo's ``interleav_wrap``: text split at ``<ImageHere>``, each non-empty part without BOS, images between."""
    parts = text.replace("<Img>", "").replace("</Img>", "").split(IMAGE_HERE)
    if len(parts) != len(images) + 1:
        raise ValueError(f"the text has {len(parts) - 1} {IMAGE_HERE} markers but {len(images)} images were given")
    segments: list[Segment] = []
    for i, part in enumerate(parts):
        if part:
            segments.append(Text(part))
        if i < len(images):
            segments.append(images[i])
    return segments


def select_image_text(sections: list[str], candidate_count: int = len(SELECT_LETTERS)) -> str:
    """``model_select_image``'s question: the article so far (earlier chosen images between ``sections``),
    then the candidates A–D (fewer letters when fewer images were found)."""
    choices = "\n".join(f"{letter}.{IMAGE_HERE}" for letter in SELECT_LETTERS[:candidate_count])
    return SELECT_INSTRUCTION + IMAGE_HERE.join(sections) + SELECT_QUESTION.format(choices=choices)


def parse_selection(answer: str, candidate_count: int = len(SELECT_LETTERS)) -> int | None:
    """The candidate index an answer names (its first character after one leading space), else None."""
    if not answer:
        return None
    letter = answer[1] if answer[0] == " " and len(answer) > 1 else answer[0]
    index = SELECT_LETTERS.find(letter)
    return index if 0 <= index < candidate_count else None


def until_turn_marker(text: str) -> str:
    """``text`` up to the first EOH/EOA a model wrote into it: beam search stops only when every beam ends in
    a stop id, so the best one can hold a marker mid-reply; what follows it belongs to no reply."""
    return TURN_MARKERS.split(text, maxsplit=1)[0]
