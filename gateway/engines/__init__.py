"""The engines behind the gateway: discovery, health, and routing policies."""
