"""The API gateway: OpenAI-compatible REST and public gRPC in front of engine pods."""
