"""The engine pod: the engine behind gRPC (proto/tessera/engine/v1), with health, metrics, drain."""
