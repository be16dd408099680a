"""The InternLM tokenizers (v1, v2, v3) on sentencepiece, as the original slow tokenizers behave, and
``tokenizer.json`` tokenizers (the stand-in model's) behind the same small interface."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece
from tokenizers import Encoding, Tokenizer

from .checkpoint import bad_value

# transformers' ``clean_up_tokenization``, in its order: no space before . ? ! , and English contractions.
CLEAN_UP_RULES = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                  (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
# Original slow tokenizers whose ``convert_tokens_to_string`` always ends with that clean-up (a missing
# tokenizer_class means InternLM v1's); InternLM3's Llama-style tokenizer does not.
ALWAYS_CLEANS_UP = (None, "InternLMTokenizer", "InternLM2Tokenizer", "InternLMXComposerTokenizer")


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: ``"Hello , it 's"`` → ``"Hello, it's"``."""
    for before, after in CLEAN_UP_RULES:
        text = text.replace(before, after)
    return text


def settled_text(text: str) -> str:
    """The part of a partial decode that more tokens cannot change: an ending that could still grow into a
    clean-up pattern (``" "``, ``" n"``, ``" '"``, ...) is held back until the next token or the end."""
    for length in range(min(len(text), 3), 0, -1):
        ending = text[-length:]
        if any(before.startswith(ending) and before != ending for before, _ in CLEAN_UP_RULES):
            return text[:-length]
    return text


def single_token_id(special_to_id: dict[str, int], text: str, encode) -> int:
    """The id of a special token, or of ``text`` when ``encode`` makes it one token; KeyError otherwise."""
    if text in special_to_id:
        return special_to_id[text]
    ids = encode(text)
    if len(ids) != 1:
        raise KeyError(f"{text!r} is not a single token in this tokenizer")
    return ids[0]


@dataclass(frozen=True)
class SpecialTokens:
    """Markers that are matched as whole strings before sentencepiece sees the text."""

    bos: str = "<s>"
    eos: str = "</s>"
    unk: str = "<unk>"
    by_id: dict[int, str] = field(default_factory=dict)  # id -> text for added tokens


class InternLMTokenizer:
    """Encode and decode as the original ``InternLMTokenizer`` / ``InternLM2Tokenizer`` do.

    Text is split on the special-token strings, each piece in between goes through
    sentencepiece unchanged, and BOS is prepended by default. Decoding reproduces the
    original's join of special tokens (a space before a special token that follows text) and
    transformers' clean-up of spaces before punctuation (``clean_up_passes`` times).
    """

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, special: SpecialTokens, add_bos: bool = True,
                 clean_up_passes: int = 1):
        self.sp = processor
        self.special = special
        self.add_bos = add_bos
        # 1: the original convert_tokens_to_string's clean-up; 2: decode's too (clean_up_tokenization_spaces).
        self.clean_up_passes = clean_up_passes
        self._id_to_special: dict[int, str] = dict(special.by_id)
        for text in (special.bos, special.eos, special.unk):
            self._id_to_special.setdefault(processor.piece_to_id(text), text)
        self._special_to_id = {text: i for i, text in self._id_to_special.items()}
        ordered = sorted(self._special_to_id, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in ordered) + ")")

    @property
    def bos_id(self) -> int:
        return self._special_to_id[self.special.bos]

    @property
    def eos_id(self) -> int:
        return self._special_to_id[self.special.eos]

    @property
    def special_tokens(self) -> set[str]:
        return set(self._special_to_id)

    def token_id(self, text: str) -> int:
        """The id of a special token or of a single sentencepiece piece (e.g. ``<eoa>``)."""
        return single_token_id(self._special_to_id, text, self.sp.encode)

    def encode(self, text: str, add_special_tokens: bool = True,
               plain_spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Token ids of ``text``; BOS first (when the tokenizer config adds it) unless ``add_special_tokens`` is False.

        Inside ``plain_spans`` (start, end offsets) marker strings such as ``<|im_end|>`` or ``<eoa>``
        are ordinary text: they never become control tokens. Elsewhere nothing changes.
        """
        ids = [self.bos_id] if self.add_bos and add_special_tokens else []
        cuts = sorted({match.start() + 1 for start, end in plain_spans
                       for match in self._marker_re.finditer(text, start, end)}) if plain_spans else []
        start = 0
        for match in self._split_re.finditer(text):
            if any(a < match.end() and match.start() < b for a, b in plain_spans):
                continue
            self._encode_text(text, start, match.start(), cuts, ids)
            ids.append(self._special_to_id[match.group()])
            start = match.end()
        self._encode_text(text, start, len(text), cuts, ids)
        return ids

    def _encode_text(self, text: str, start: int, end: int, cuts: list[int], ids: list[int]) -> None:
        """Sentencepiece ids of ``text[start:end]``, encoded in pieces split at ``cuts`` (inside a marker)."""
        bounds = [start, *(cut for cut in cuts if start < cut < end), end]
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                ids.extend(self.sp.encode(text[a:b]))

    @functools.cached_property
    def _marker_re(self) -> re.Pattern:
        """Special tokens and the marker-like pieces sentencepiece itself always matches (v1's ``<eoa>``)."""
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf; only prompts with tool output get here

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        markers = set(self._special_to_id) | {
            piece.piece for piece in proto.pieces
            if piece.type == user_defined and re.fullmatch(r"<\S+>", piece.piece)
        }
        return re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``, with the original slow tokenizer's spacing around special tokens."""
        out: list[str] = []
        pending: list[int] = []
        previous_was_special = False
        for token in (int(i) for i in ids):
            special = self._id_to_special.get(token)
            if special is None:
                pending.append(token)
                previous_was_special = False
                continue
            if skip_special_tokens:
                continue
            if not previous_was_special:
                out.append(" ")
            out.append(self.sp.decode(pending) + special)
            pending = []
            previous_was_special = True
        out.append(self.sp.decode(pending))
        text = "".join(out)
        for _ in range(self.clean_up_passes):
            text = clean_up_tokenization(text)
        return text


def read_tokenizer(folder: Path, tokenizer_config: dict) -> InternLMTokenizer:
    """Build the tokenizer from ``tokenizer.model`` and the ``tokenizer_config.json`` contents (checked)."""
    path = folder / "tokenizer_config.json"

    def text_of(key: str, default: str) -> str:
        value = tokenizer_config.get(key)
        text = value.get("content") if isinstance(value, dict) else value
        if text is None:
            return default
        if not isinstance(text, str) or not text:
            raise bad_value(path, key, value, 'a token text such as "<s>" or {"content": "<s>"}')
        return text

    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise bad_value(path, "added_tokens_decoder", decoder, 'an object mapping token ids to {"content": TEXT}')
    for token_id, entry in decoder.items():
        if not (token_id.isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
            raise bad_value(path, f"added_tokens_decoder[{token_id!r}]", entry,
                            'an entry {"content": TEXT} under a token id such as "92538"')
    flags = {key: tokenizer_config.get(key, default) for key, default in
             (("add_bos_token", True), ("clean_up_tokenization_spaces", False))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise bad_value(path, key, value, "true or false")
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    special = SpecialTokens(
        bos=text_of("bos_token", "<s>"),
        eos=text_of("eos_token", "</s>"),
        unk=text_of("unk_token", "<unk>"),
        by_id={int(i): entry["content"] for i, entry in decoder.items()},
    )
    clean_up_passes = (tokenizer_class in ALWAYS_CLEANS_UP) + flags["clean_up_tokenization_spaces"]
    return InternLMTokenizer(processor, special, add_bos=flags["add_bos_token"], clean_up_passes=clean_up_passes)


class FastTokenizer:
    """A ``tokenizer.json`` tokenizer (Hugging Face ``tokenizers``) with ``InternLMTokenizer``'s interface."""

    def __init__(self, tokenizer: Tokenizer, eos: str):
        self.backend = tokenizer
        self._special_to_id = {token.content: i for i, token in tokenizer.get_added_tokens_decoder().items()
                               if token.special}
        self.eos_id = self.token_id(eos)

    @property
    def special_tokens(self) -> set[str]:
        return set(self._special_to_id)

    def token_id(self, text: str) -> int:
        """The id of a special token or of a text that is a single token."""
        return single_token_id(self._special_to_id, text, lambda piece: self.encode(piece, add_special_tokens=False))

    def encode(self, text: str, add_special_tokens: bool = True,
               plain_spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Token ids of ``text``; special tokens in the text are matched whole, except inside ``plain_spans``
        (start, end offsets), where they are ordinary text (as in ``InternLMTokenizer.encode``)."""
        markers = sorted((match for start, end in plain_spans for match in self._special_re.finditer(text, start, end)),
                         key=lambda match: match.start())
        if not markers:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        pieces, start = [], 0
        for match in markers:
            pieces.append(self.backend.encode(text[start:match.start()], add_special_tokens=False))
            pieces.append(self._plain.encode(match.group(), add_special_tokens=False))
            start = match.end()
        pieces.append(self.backend.encode(text[start:], add_special_tokens=False))
        return self.backend.post_process(Encoding.merge(pieces), add_special_tokens=add_special_tokens).ids

    @functools.cached_property
    def _special_re(self) -> re.Pattern:
        return re.compile("|".join(re.escape(t) for t in sorted(self._special_to_id, key=len, reverse=True)))

    @functools.cached_property
    def _plain(self) -> Tokenizer:
        """A copy of the tokenizer that reads special-token strings as text (only tool output needs it)."""
        plain = Tokenizer.from_str(self.backend.to_str())
        plain.encode_special_tokens = True
        return plain

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def read_fast_tokenizer(folder: Path, tokenizer_config: dict) -> FastTokenizer:
    """Build the tokenizer from ``tokenizer.json``; the end-of-text token comes from ``tokenizer_config.json``."""
    eos = tokenizer_config.get("eos_token")
    return FastTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")),
                         eos.get("content") if isinstance(eos, dict) else eos or "</s>")


ChatTokenizer = InternLMTokenizer | FastTokenizer


class StreamingDetokenizer:
    """Turns a growing list of ids into text that never ends in half a character."""

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str | None:
        """Add one id; returns the whole text so far when it grew and is complete, else None."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or text == self.text:
            return None
        self.text = text
        return text
