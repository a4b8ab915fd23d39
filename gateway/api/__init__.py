"""One module per endpoint (schemas + handler), shared by the REST and gRPC fronts."""
