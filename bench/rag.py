"""RAG sidecar benchmark: ingest throughput and retrieval latency, INT8 vs float embedder.

For each embedder, one collection grows through the sizes asked for (default
10,000 then 100,000 chunks) by ingest requests of synthetic English documents
of about one chunk each (several requests in flight, so the dynamic batcher
sees concurrent work, as a loaded sidecar does). At each size it records:

- ingest throughput: chunks/s of the ingests that grew the collection to this
  size (chunking, embedding, FAISS add, durable commit; the HNSW build past
  the threshold included);
- retrieval latency p50/p99 of distinct queries with cold caches, through
  RagService.retrieve (query embedding + search), one at a time;
- search-only latency p50/p99 (FAISS on a precomputed query vector).

Expect it to take long on a small CPU: embedding dominates (about 50-70 chunks/s on
2 cores), so 100,000 chunks take roughly half an hour per embedder. Run it on a
quiet machine (every core otherwise idle) with one command:

    .venv/bin/python bench/rag.py                   # full run, writes bench/results/rag-<date>.md
    .venv/bin/python bench/rag.py --sizes 500 --queries 50 --out /tmp/rag.md   # quick sanity
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.rag.config import EmbedderConfig, RagConfig
from services.rag.documents import Document
from services.rag.embedder import Embedder, build_embedder
from services.rag.service import RagService

ROOT = Path(__file__).resolve().parents[1]
_VOCABULARY = (
    "the of and a to in is was for on that with as by at from his her an which are this be "
    "river mountain city planet language protocol coffee bread vaccine sleep market energy "
    "system history empire science music engine island forest ocean bridge library museum "
    "ancient modern northern southern early late large small famous important common rare "
    "built discovered measured invented produced published recorded described elected "
    "water light carbon oxygen memory network signal price trade law court school church "
    "king queen army treaty war peace festival harvest winter summer spring autumn century "
    "village valley desert lake coast harbour railway canal tower castle temple garden farm"
)
WORDS = _VOCABULARY.split()
# name -> (quantization, INT8 scheme); int8-ort is onnxruntime's per-tensor quantize_dynamic
EMBEDDERS = {
    "int8": ("int8", "per_token"),
    "float": ("none", "per_token"),
    "int8-ort": ("int8", "ort_dynamic"),
}


def synthetic_documents(start: int, count: int, seed: int) -> list[Document]:
    """``count`` documents of 70-95 words (about one 128-token chunk each), deterministic."""
    rng = random.Random(seed * 1_000_003 + start)
    docs = []
    for i in range(start, start + count):
        sentences = []
        for _ in range(rng.randint(7, 9)):
            words = rng.choices(WORDS, k=rng.randint(9, 11))
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(Document(f"doc-{i}", " ".join(sentences), metadata={"shard": i % 16}))
    return docs


def queries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{rng.choice(['What', 'Where', 'When', 'Why', 'How'])} "
        + " ".join(rng.choices(WORDS, k=rng.randint(5, 9)))
        + f" {i}?"
        for i in range(n)
    ]


def percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(samples) * 1000.0, [50, 99])
    return float(p50), float(p99)


async def grow(
    service: RagService, target: int, have: int, batch_docs: int, concurrency: int
) -> tuple[int, float]:
    """Ingest until the collection holds ``target`` chunks; returns (chunks added, seconds)."""
    added = 0
    next_id = have
    t0 = time.perf_counter()
    while have + added < target:
        batches = []
        remaining = target - have - added  # documents; each is about one chunk
        for _ in range(concurrency):
            n = min(batch_docs, remaining)
            if n <= 0:
                break
            batches.append(synthetic_documents(next_id, n, seed=1))
            next_id += n
            remaining -= n
        results = await asyncio.gather(*(service.ingest("bench", b) for b in batches))
        added += sum(r.chunks for r in results)
    return added, time.perf_counter() - t0


async def measure(service: RagService, n_queries: int, size: int) -> dict[str, Any]:
    col = service.collection("bench")
    qs = queries(n_queries, seed=size)
    for q in qs[:5]:  # warm-up: sessions, FAISS structures, caches of the allocator
        await service.retrieve("bench", "warm-up " + q, 4)
    retrieve = []
    for q in qs:
        t0 = time.perf_counter()
        await service.retrieve("bench", q, 4)
        retrieve.append(time.perf_counter() - t0)
    vectors = service.embedder.embed(qs)
    search = []
    for v in vectors:
        t0 = time.perf_counter()
        col.search(v, 4, None)
        search.append(time.perf_counter() - t0)
    stats = col.stats()
    return {
        "chunks": stats.chunks,
        "index": stats.index_type,
        "retrieve": percentiles(retrieve),
        "search": percentiles(search),
    }


async def run_embedder(
    name: str, embedder: Embedder, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="tessera-rag-bench-") as data_dir:
        config = RagConfig(
            index={"data_dir": data_dir, "approximate_threshold": args.approximate_threshold},
            embedder={
                "quantization": EMBEDDERS[name][0],
                "int8_scheme": EMBEDDERS[name][1],
                "num_threads": args.threads,
            },
            cache={"redis_url": ""},
        )
        service = RagService(config, embedder=embedder)
        await service.start()
        await service.create_collection("bench")
        have = 0
        for size in args.sizes:
            added, seconds = await grow(service, size, have, args.batch_docs, args.concurrency)
            have += added
            row = await measure(service, args.queries, size)
            row.update(embedder=name, ingest_chunks_per_s=added / seconds, ingest_s=seconds)
            rows.append(row)
            print(
                f"{name:5s} {row['chunks']:>7d} chunks ({row['index']}): ingest "
                f"{row['ingest_chunks_per_s']:.1f} chunks/s; retrieve p50 {row['retrieve'][0]:.2f}"
                f" ms p99 {row['retrieve'][1]:.2f} ms; search p50 {row['search'][0]:.3f} ms "
                f"p99 {row['search'][1]:.3f} ms",
                flush=True,
            )
        await service.close()
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# RAG sidecar benchmark, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Command: `.venv/bin/python bench/rag.py "
        f"{' '.join(sys.argv[1:])}`.",
        "",
        f"Ingest: requests of {args.batch_docs} synthetic documents (about one 128-token chunk "
        f"each), {args.concurrency} in flight; HNSW past {args.approximate_threshold} chunks. "
        f"Retrieval: {args.queries} distinct queries, top-4, cold caches, one at a time.",
        "",
        "| embedder | chunks | index | ingest chunks/s | retrieve p50 ms | retrieve p99 ms "
        "| search p50 ms | search p99 ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['embedder']} | {r['chunks']} | {r['index']} | {r['ingest_chunks_per_s']:.1f} "
            f"| {r['retrieve'][0]:.2f} | {r['retrieve'][1]:.2f} | {r['search'][0]:.3f} "
            f"| {r['search'][1]:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="collection sizes in chunks")
    parser.add_argument(
        "--embedders", default="int8,float", help="comma list of int8, float, int8-ort"
    )
    parser.add_argument("--queries", type=int, default=200, help="retrievals timed per size")
    parser.add_argument("--batch-docs", type=int, default=64, help="documents per ingest request")
    parser.add_argument("--concurrency", type=int, default=4, help="ingest requests in flight")
    parser.add_argument("--approximate-threshold", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report path")
    args = parser.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    names = [n.strip() for n in args.embedders.split(",")]
    if unknown := [n for n in names if n not in EMBEDDERS]:
        parser.error(f"unknown embedder(s) {unknown}; choose from {sorted(EMBEDDERS)}")
    rows: list[dict[str, Any]] = []
    for name in names:
        quantization, scheme = EMBEDDERS[name]
        embedder = build_embedder(
            EmbedderConfig(
                quantization=quantization,  # type: ignore[arg-type]
                int8_scheme=scheme,  # type: ignore[arg-type]
                num_threads=args.threads,
            )
        )
        rows += asyncio.run(run_embedder(name, embedder, args))
    out = args.out or ROOT / "bench" / "results" / f"rag-{datetime.date.today().isoformat()}.md"
    out.write_text(report(rows, args))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
