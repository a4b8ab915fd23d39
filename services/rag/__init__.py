"""The RAG sidecar: INT8 MiniLM embedder, FAISS collections on disk, Redis caches, HTTP API."""
