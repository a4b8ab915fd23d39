"""The sidecar's HTTP API: one module per endpoint group, errors rendered OpenAI-style."""
