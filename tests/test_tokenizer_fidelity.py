"""Decode as the original tokenizers do, including transformers' clean-up of spaces before punctuation.

The original InternLM v1, InternLM2 and XComposer tokenizers end ``convert_tokens_to_string`` with
``self.clean_up_tokenization(out_string)``, whatever ``clean_up_tokenization_spaces`` says; transformers'
``decode`` applies it a second time when that setting is true. The expected texts come from transformers'
own ``clean_up_tokenization`` (the oracle) and from the rules written out by hand.
"""

from __future__ import annotations

import json
import shutil

import pytest
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from internlm_demo.models.loading import read_folder_tokenizer
from internlm_demo.models.tokenizer import StreamingDetokenizer, settled_text
from tests.conftest import FIXTURES_DIR

FOLDERS = ("internlm-chat-7b-tiny", "internlm-chat-20b-tiny", "internlm2-chat-7b-tiny", "internlm-xcomposer-7b-tiny")
SPACED = "Hello , world ! I do n't know . It 's fine , they 're here ; we 've I 'm a ' b ?"
CLEANED = "Hello, world! I don't know. It's fine, they're here ; we've I'm a'b?"  # the rules applied by hand


def transformers_clean_up(text: str) -> str:
    return PreTrainedTokenizerBase.clean_up_tokenization(None, text)


@pytest.fixture(scope="module", params=FOLDERS)
def tokenizer(request):
    return read_folder_tokenizer(FIXTURES_DIR / request.param)


def test_the_oracle_agrees_with_the_rules_by_hand():
    assert transformers_clean_up(SPACED) == CLEANED


def test_decode_always_cleans_up_spaces(tokenizer):
    ids = tokenizer.encode(SPACED, add_special_tokens=False)
    assert tokenizer.sp.decode(ids) == SPACED  # sentencepiece alone keeps the spaces
    assert tokenizer.decode(ids) == CLEANED
    assert tokenizer.decode(ids, skip_special_tokens=True) == CLEANED


def test_clean_up_runs_over_special_tokens_too(tokenizer):
    """The original joins special tokens in (a space before one that follows text), then cleans the whole."""
    left, right = tokenizer.encode("ok .", add_special_tokens=False), tokenizer.encode(" , yes !", add_special_tokens=False)
    ids = [tokenizer.bos_id, *left, tokenizer.eos_id, *right]
    raw = " " + tokenizer.special.bos + " " + tokenizer.sp.decode(left) + tokenizer.special.eos + tokenizer.sp.decode(right)
    assert tokenizer.decode(ids) == transformers_clean_up(raw) == " <s> ok.</s>, yes!"
    assert tokenizer.decode(ids, skip_special_tokens=True) == transformers_clean_up(tokenizer.sp.decode(left + right))


def folder_with_tokenizer_config(tmp_path, source: str, **changes):
    folder = tmp_path / source
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES_DIR / source / "tokenizer.model", folder / "tokenizer.model")
    config = json.loads((FIXTURES_DIR / source / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_clean_up_tokenization_spaces_true_cleans_a_second_time(tmp_path):
    text = "x  . y"  # one pass leaves "x . y", a second makes it "x. y"
    once = read_folder_tokenizer(folder_with_tokenizer_config(tmp_path, "internlm2-chat-7b-tiny"))
    ids = once.encode(text, add_special_tokens=False)
    assert once.decode(ids) == transformers_clean_up(text) == "x . y"
    twice = read_folder_tokenizer(folder_with_tokenizer_config(
        tmp_path / "b", "internlm2-chat-7b-tiny", clean_up_tokenization_spaces=True))
    assert twice.decode(ids) == transformers_clean_up(transformers_clean_up(text)) == "x. y"


def test_internlm3_tokenizer_does_not_clean_up(tmp_path):
    """InternLM3's tokenizer is Llama's: spaces stay unless clean_up_tokenization_spaces asks."""
    tokenizer = read_folder_tokenizer(folder_with_tokenizer_config(
        tmp_path, "internlm2-chat-7b-tiny", tokenizer_class="InternLM3Tokenizer"))
    ids = tokenizer.encode(SPACED, add_special_tokens=False)
    assert tokenizer.decode(ids) == SPACED


def test_streamed_text_only_grows_and_ends_as_the_final_decode(tokenizer):
    ids = tokenizer.encode(SPACED + " x  .", add_special_tokens=False)
    final = tokenizer.decode(ids, skip_special_tokens=True)
    detokenizer = StreamingDetokenizer(tokenizer)
    partials = [text for token in ids if (text := detokenizer.push(token)) is not None]
    assert partials[-1] == final
    settled = [settled_text(text) for text in partials]
    assert all(final.startswith(text) for text in settled)
    assert all(later.startswith(earlier) for earlier, later in zip(settled, settled[1:]))
    # Without holding back, some partial ends in a space that a later "." removes.
    assert any(not final.startswith(text) for text in partials)
