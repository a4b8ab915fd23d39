"""Shared helpers of the RAG tests: the labelled data set and small configurations."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from services.rag.config import RagConfig
from services.rag.documents import Document, parse_jsonl

DATA = Path(__file__).resolve().parents[3] / "data" / "rag"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def dataset_documents() -> list[Document]:
    return parse_jsonl((DATA / "documents.jsonl").read_text())


def dataset_questions() -> list[tuple[str, str]]:
    """(question, id of the document that answers it)."""
    rows = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()]
    return [(r["question"], r["document_id"]) for r in rows]


def dataset_sentences() -> list[str]:
    """Every sentence of every document: the INT8-vs-float cosine test set."""
    return [
        s.strip()
        for doc in dataset_documents()
        for s in re.split(r"(?<=[.!?])\s+", doc.text)
        if s.strip()
    ]


def unique_prefix() -> str:
    """A Redis key prefix no other test (or process) uses."""
    return f"tessera:test:rag:{uuid.uuid4().hex[:12]}:"


def rag_config(data_dir: Path, redis: bool = False, **groups: dict[str, Any]) -> RagConfig:
    """Sidecar settings for tests: a temp data dir, port 0, memory cache unless ``redis``."""
    cache: dict[str, Any] = {
        "redis_url": REDIS_URL if redis else "",
        "key_prefix": unique_prefix(),
        # keys of the shared Redis outlive the test only briefly
        "embedding_ttl": 60.0,
        "retrieval_ttl": 60.0,
    }
    cache.update(groups.pop("cache", {}))
    server = {"host": "127.0.0.1", "port": 0, **groups.pop("server", {})}
    index = {"data_dir": str(data_dir), **groups.pop("index", {})}
    return RagConfig(server=server, index=index, cache=cache, **groups)
