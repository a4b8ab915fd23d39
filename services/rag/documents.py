"""Documents in (plain text, Markdown, JSON lines) and their chunks by tokens with overlap."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from services.rag.errors import InvalidInputError
from services.rag.results import MetadataValue

__all__ = ["ChunkText", "Chunker", "Document", "MetadataValue", "parse_jsonl", "validate_document"]

DocumentFormat = Literal["text", "markdown"]

_ID = re.compile(r"^[\w.:@/+-]{1,256}$")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One document to ingest: an id unique in its collection, its text and metadata."""

    id: str
    text: str
    format: DocumentFormat = "text"
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkText:
    """A chunk cut from a document: its position among the document's chunks and metadata."""

    index: int
    text: str
    metadata: dict[str, MetadataValue]


def validate_document(doc: Document, param: str = "documents") -> Document:
    """``doc`` if its id, text and metadata are acceptable; InvalidInputError otherwise."""
    if not _ID.match(doc.id):
        raise InvalidInputError(
            f"document id {doc.id[:80]!r} must be 1-256 letters, digits or . _ : @ / + -", param
        )
    if not doc.text.strip():
        raise InvalidInputError(f"document {doc.id!r} has no text", param)
    for key, value in doc.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            raise InvalidInputError(
                f"document {doc.id!r}: metadata values must be strings, numbers or booleans "
                f"(key {key!r})",
                param,
            )
    return doc


def parse_jsonl(body: str) -> list[Document]:
    """Documents from JSON lines: {"id", "text", "metadata"?, "format"?} per line."""
    docs = []
    for n, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"line {n}: not JSON ({e.msg})", "body") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InvalidInputError(f'line {n}: expected an object with a string "text"', "body")
        doc_id = obj.get("id")
        if not isinstance(doc_id, str):
            raise InvalidInputError(f'line {n}: expected a string "id"', "body")
        fmt = obj.get("format", "text")
        if fmt not in ("text", "markdown"):
            raise InvalidInputError(f'line {n}: "format" must be "text" or "markdown"', "body")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise InvalidInputError(f'line {n}: "metadata" must be an object', "body")
        docs.append(validate_document(Document(doc_id, obj["text"], fmt, metadata), "body"))
    if not docs:
        raise InvalidInputError("no documents in the body", "body")
    return docs


def markdown_sections(text: str) -> list[tuple[str, int, int]]:
    """(heading path, start, end) of each section; chunks never cross a heading."""
    sections: list[tuple[str, int, int]] = []
    path: list[tuple[int, str]] = []
    start, title = 0, ""
    for m in _HEADING.finditer(text):
        if text[start : m.start()].strip():
            sections.append((title, start, m.start()))
        level = len(m.group(1))
        path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, m.group(2).strip())]
        title = " > ".join(t for _, t in path)
        start = m.start()  # the heading line stays with its section: it is good context
    if text[start:].strip():
        sections.append((title, start, len(text)))
    return sections


class Chunker:
    """Cuts text into windows of ``chunk_size`` tokens sharing ``chunk_overlap`` tokens."""

    def __init__(
        self,
        token_offsets: Callable[[str], list[tuple[int, int]]],
        chunk_size: int,
        chunk_overlap: int,
    ) -> None:
        if not 0 <= chunk_overlap < chunk_size:
            raise InvalidInputError("chunk_overlap must be at least 0 and below chunk_size")
        self._offsets = token_offsets
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    def chunk(self, doc: Document) -> list[ChunkText]:
        """The document's chunks in order; Markdown is cut per section, section kept as metadata."""
        if doc.format == "markdown":
            parts = markdown_sections(doc.text)
        else:
            parts = [("", 0, len(doc.text))]
        chunks: list[ChunkText] = []
        for section, start, end in parts:
            extra: dict[str, Any] = {"section": section} if section else {}
            for text in self._windows(doc.text[start:end]):
                chunks.append(ChunkText(len(chunks), text, {**doc.metadata, **extra}))
        return chunks

    def _windows(self, text: str) -> list[str]:
        spans = self._offsets(text)
        if not spans:
            return [text.strip()] if text.strip() else []
        stride = self.chunk_size - self.chunk_overlap
        windows = []
        for first in range(0, len(spans), stride):
            last = min(first + self.chunk_size, len(spans)) - 1
            windows.append(text[spans[first][0] : spans[last][1]].strip())
            if last == len(spans) - 1:
                break
        return [w for w in windows if w]
