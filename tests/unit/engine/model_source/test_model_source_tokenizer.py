"""Tokenizer: encodes, decodes and renders chat prompts exactly like the transformers reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from engine.model_source import ModelBundle, ModelSourceError, Tokenizer

if TYPE_CHECKING:
    from tests.unit.engine.model_source.conftest import TinyGGUF

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "multi\nline\n\ttabbed text\r\n",
    "Emoji 🙂👍🏽 and flags 🇫🇷",
    "中文分词测试，日本語のテキスト、한국어",
    "Accents: café, naïve, Ærøskøbing, façade",
    "Code: def f(x):\n    return x ** 2  # comment",
    "Numbers 1234567890 3.14159 -42",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
    "",
]

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ],
    [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another, in 中文 please 🍐"},
    ],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two", "tool_calls": None},
    ],
]


@pytest.fixture(scope="module")
def tok(default_bundle: ModelBundle) -> Tokenizer:
    return default_bundle.tokenizer


def test_smollm2_special_ids(tok: Tokenizer, hf_reference_tokenizer: Any) -> None:
    assert tok.vocab_size == len(hf_reference_tokenizer) == 49152
    assert tok.bos_token_id == hf_reference_tokenizer.bos_token_id == 1
    assert tok.eos_token_ids == [hf_reference_tokenizer.eos_token_id] == [2]
    assert tok.is_special(0) and tok.is_special(2) and not tok.is_special(100)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok: Tokenizer, hf_reference_tokenizer: Any, text: str):
    for special in (True, False):
        expected = hf_reference_tokenizer.encode(text, add_special_tokens=special)
        assert tok.encode(text, add_special_tokens=special) == expected


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips_and_matches_transformers(
    tok: Tokenizer, hf_reference_tokenizer: Any, text: str
) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == text
    for skip in (True, False):
        expected = hf_reference_tokenizer.decode(ids, skip_special_tokens=skip)
        assert tok.decode(ids, skip_special_tokens=skip) == expected


def test_smollm2_adds_no_bos(tok: Tokenizer) -> None:
    assert tok.encode("Hi") == tok.encode("Hi", add_special_tokens=False)


def test_decode_drops_out_of_vocabulary_ids(tok: Tokenizer) -> None:
    ids = tok.encode("Paris", add_special_tokens=False)
    assert tok.decode([*ids, tok.vocab_size, 10**9, -1]) == "Paris"


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_template_matches_transformers(
    tok: Tokenizer,
    hf_reference_tokenizer: Any,
    conversation: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> None:
    expected = hf_reference_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert tok.apply_chat_template(conversation, add_generation_prompt) == expected


def test_tiny_chat_template_matches_transformers(tiny_gguf: TinyGGUF, tiny_bundle: ModelBundle):
    """A template with indented blocks, tojson and special-token variables."""
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(tiny_gguf.path.parent), gguf_file=tiny_gguf.path.name)
    extra = [{"role": "user", "content": 'he said "hi" <b>', "meta": {"k": ["é", 1]}}]
    for conversation in [*CONVERSATIONS, extra]:
        for add in (True, False):
            expected = ref.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add
            )
            assert tiny_bundle.tokenizer.apply_chat_template(conversation, add) == expected
    for text in TEXTS:
        assert tiny_bundle.tokenizer.encode(text) == ref.encode(text)


def test_chat_template_raise_exception_surfaces(tiny_bundle: ModelBundle) -> None:
    import jinja2

    with pytest.raises(jinja2.TemplateError, match="unknown role tool"):
        tiny_bundle.tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_save_and_from_dir_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    assert (again.vocab_size, again.bos_token_id) == (tok.vocab_size, tok.bos_token_id)
    assert again.eos_token_ids == tok.eos_token_ids
    assert again.chat_template == tok.chat_template
    assert again.encode(TEXTS[3]) == tok.encode(TEXTS[3])


def test_saved_tokenizer_loads_in_transformers(tok: Tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ref.encode(TEXTS[4]) == tok.encode(TEXTS[4])
    conversation = CONVERSATIONS[2]
    rendered = ref.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered == tok.apply_chat_template(conversation)


def test_from_dir_reads_chat_template_jinja_and_generation_eos(
    tok: Tokenizer, tmp_path: Path
) -> None:
    tok.save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
    again = Tokenizer.from_dir(tmp_path)
    assert again.apply_chat_template([{"role": "user", "content": "x"}]) == "x!"
    assert again.eos_token_ids == [2, 0]


def test_from_dir_without_tokenizer_json_is_a_model_source_error(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="tokenizer"):
        Tokenizer.from_dir(tmp_path)
