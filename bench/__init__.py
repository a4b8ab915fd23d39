"""Benchmarks: engine throughput, RAG, and the serving benchmark (`bench/serving.py`)."""
