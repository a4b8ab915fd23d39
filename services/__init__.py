"""Sidecars that run beside the engines (the RAG sidecar lives in services.rag)."""
