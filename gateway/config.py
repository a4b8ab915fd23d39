"""Gateway settings: one pydantic-settings root composed of one model per concern.

Every leaf is a CLI flag of `tessera gateway` / `tessera serve` and an environment
variable (``TESSERA_GATEWAY_ROUTING__POLICY``); flags win over the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.engines.routing import RoutingPolicyName
from gateway.settings_parts import (
    AuthConfig,
    RagLinkConfig,
    RateLimitConfig,
    RedisConfig,
    ResponseCacheConfig,
    SemanticCacheConfig,
)


class HTTPConfig(BaseModel):
    """The REST and public gRPC fronts."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="bind address of REST and gRPC")
    port: int = Field(8000, ge=0, le=65535, description="REST port (0 picks a free one)")
    grpc_port: int = Field(50051, ge=0, le=65535, description="public gRPC port; 0 picks one")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_inflight: int = Field(
        256, ge=1, description="generations in flight at once; beyond it 429 at once"
    )
    request_timeout: float = Field(600.0, gt=0, description="seconds a generation may take")
    drain_timeout: float = Field(
        30.0, ge=0, description="seconds in-flight requests get at SIGTERM"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: serve REST and gRPC over TLS")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")

    @model_validator(mode="after")
    def _tls_pair(self) -> HTTPConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return self


class RoutingConfig(BaseModel):
    """Which engines exist and how a request picks one."""

    model_config = ConfigDict(extra="forbid")

    engines: list[str] = Field(
        default_factory=list,
        description="engine gRPC addresses host:port (repeat the flag or separate by commas)",
    )
    dns: str | None = Field(
        None, description="host:port resolved to every address (a Kubernetes headless service)"
    )
    policy: RoutingPolicyName = Field(
        RoutingPolicyName.PREFIX_AFFINITY,
        description="round_robin, least_outstanding or prefix_affinity",
    )
    health_interval: float = Field(
        1.0, gt=0, description="seconds between health checks and DNS refreshes"
    )
    engine_tls_ca: Path | None = Field(
        None, description="PEM CA that signed the engines' certificates: talk TLS to engines"
    )

    @field_validator("engines", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        """Comma-separated entries split; each must be HOST:PORT ([v6]:PORT for IPv6), so a
        typo stops start-up with one line instead of an engine that never gets healthy."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        found = [a.strip() for entry in value for a in str(entry).split(",") if a.strip()]
        for address in found:
            host, sep, port = address.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:50061)")
        return found


class GatewayConfig(BaseSettings):
    """Root of `tessera gateway`'s settings (engines reached over gRPC)."""

    model_config = SettingsConfigDict(
        env_prefix="TESSERA_", env_nested_delimiter="__", extra="forbid"
    )

    http: HTTPConfig = Field(default_factory=lambda: HTTPConfig())
    routing: RoutingConfig = Field(default_factory=lambda: RoutingConfig())
    rag: RagLinkConfig = Field(default_factory=lambda: RagLinkConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    limits: RateLimitConfig = Field(default_factory=lambda: RateLimitConfig())
    response_cache: ResponseCacheConfig = Field(default_factory=lambda: ResponseCacheConfig())
    semantic_cache: SemanticCacheConfig = Field(default_factory=lambda: SemanticCacheConfig())
    redis: RedisConfig = Field(default_factory=lambda: RedisConfig())
