"""Parsing documents and cutting them into token windows."""

from __future__ import annotations

import re

import pytest

from services.rag.documents import Chunker, Document, markdown_sections, parse_jsonl
from services.rag.errors import InvalidInputError


def word_offsets(text: str) -> list[tuple[int, int]]:
    """A whitespace 'tokenizer': one token per word."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def test_windows_have_chunk_size_tokens_and_share_the_overlap():
    text = " ".join(f"w{i}" for i in range(25))
    chunks = Chunker(word_offsets, chunk_size=10, chunk_overlap=3).chunk(Document("d", text))
    words = [c.text.split() for c in chunks]
    assert [len(w) for w in words] == [10, 10, 10, 4]
    assert words[0][-3:] == words[1][:3]
    assert words[-1][-1] == "w24"
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_short_document_is_one_chunk_with_its_metadata():
    doc = Document("d", "just a few words", metadata={"lang": "en"})
    (chunk,) = Chunker(word_offsets, 10, 2).chunk(doc)
    assert chunk.text == "just a few words" and chunk.metadata == {"lang": "en"}


def test_markdown_chunks_never_cross_a_heading_and_carry_their_section():
    md = "# Guide\nintro words here\n## Install\npip install it\n## Use\nrun it now\n"
    chunks = Chunker(word_offsets, 50, 5).chunk(Document("d", md, "markdown"))
    assert [c.metadata["section"] for c in chunks] == ["Guide", "Guide > Install", "Guide > Use"]
    assert chunks[1].text == "## Install\npip install it"


def test_markdown_sections_keep_text_before_the_first_heading():
    sections = markdown_sections("preface\n# A\nbody")
    assert [title for title, _, _ in sections] == ["", "A"]


def test_overlap_must_be_below_chunk_size():
    with pytest.raises(InvalidInputError):
        Chunker(word_offsets, 10, 10)


def test_jsonl_documents_with_metadata():
    body = (
        '{"id": "a", "text": "alpha", "metadata": {"year": 2020}}\n'
        "\n"
        '{"id": "b", "text": "# B", "format": "markdown"}\n'
    )
    docs = parse_jsonl(body)
    assert [(d.id, d.format, d.metadata) for d in docs] == [
        ("a", "text", {"year": 2020}),
        ("b", "markdown", {}),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "line 1: not JSON"),
        ('{"id": "a"}', 'line 1: expected an object with a string "text"'),
        ('{"text": "t"}', 'line 1: expected a string "id"'),
        ('{"id": "a", "text": "t", "metadata": {"k": [1]}}', "metadata values must be"),
        ('{"id": "bad id!", "text": "t"}', "must be 1-256 letters"),
        ('{"id": "a", "text": "   "}', "has no text"),
        ("", "no documents"),
    ],
)
def test_bad_jsonl_is_refused_with_the_reason(body: str, message: str):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_jsonl(body)
