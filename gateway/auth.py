"""API keys: hashed at rest, compared in constant time, never logged.

Keys are high-entropy random strings (`tessera keys new` makes 32 random bytes),
so a plain SHA-256 is enough to store them: there is nothing to brute-force, and a
slow password hash would only add latency to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings_parts import AuthConfig

OPEN_WARNING = (
    "no API keys configured: the gateway is open to anyone who can reach it "
    "(set --api-keys or --keys-file)"
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a log-safe id and the key's limits (None = the defaults)."""

    key_id: str
    name: str
    rpm: int | None = None
    tpm: int | None = None


ANONYMOUS = Principal("anonymous", "anonymous")


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_key(name: str) -> tuple[str, dict[str, Any]]:
    """A fresh random key and its keys-file entry (only the hash is stored)."""
    key = "sk-tessera-" + secrets.token_urlsafe(32)
    return key, {"name": name, "sha256": hash_key(key)}


def parse_api_key(authorization: str | None, api_key: str | None = None) -> str | None:
    """The key from `Authorization: Bearer <key>` (or an `api-key` header)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key.strip() if api_key and api_key.strip() else None


class APIKeyStore:
    """The configured keys, by hash."""

    OPEN_WARNING = OPEN_WARNING

    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = entries

    @classmethod
    def from_config(cls, config: AuthConfig) -> APIKeyStore:
        entries: list[tuple[bytes, Principal]] = []
        for i, key in enumerate(config.api_keys):
            digest = hash_key(key)
            entries.append((bytes.fromhex(digest), Principal(digest[:8], f"key-{i}")))
        if config.keys_file is not None:
            data = json.loads(Path(config.keys_file).read_text())
            if not isinstance(data, list):
                raise ValueError(f"{config.keys_file}: expected a JSON list of key entries")
            for item in data:
                digest = str(item["sha256"]).lower()
                if len(digest) != 64:
                    raise ValueError(f"{config.keys_file}: sha256 must be 64 hex characters")
                principal = Principal(
                    digest[:8],
                    str(item.get("name") or digest[:8]),
                    item.get("rpm"),
                    item.get("tpm"),
                )
                entries.append((bytes.fromhex(digest), principal))
        return cls(entries)

    @property
    def is_open(self) -> bool:
        return not self._entries

    def authenticate(self, presented: str | None) -> Principal | None:
        """The key's principal (anonymous when open), or None for a missing or wrong key."""
        if self.is_open:
            return ANONYMOUS
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found: Principal | None = None
        for stored, principal in self._entries:  # every entry compared: no timing tell
            if hmac.compare_digest(stored, digest):
                found = principal
        return found
