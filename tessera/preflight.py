"""Start-up checks a command runs before it loads a model: each failure is one line that
names the fix, printed in a second instead of after a minute of loading."""

from __future__ import annotations

from pathlib import Path

from engine.model_source.cache import default_cache_dir, unusable_cache_dir
from tessera.http_server import port_in_use


def preflight(
    command: str, host: str, ports: list[tuple[str, int]], cache_dir: Path | None
) -> str | None:
    """The first problem as one error line (ports that cannot be bound, a cache directory
    that cannot be written), or None."""
    for flag, port in ports:
        why = port_in_use(host, port)
        if why is not None:
            return (
                f"tessera {command}: error: cannot listen on {host}:{port} ({why}): stop what "
                f"holds it or choose another port with {flag}"
            )
    where = cache_dir or default_cache_dir()
    why = unusable_cache_dir(where)
    if why is not None:
        return (
            f"tessera {command}: error: the cache directory {where} cannot be used ({why}): "
            "point --cache-dir or TESSERA_CACHE_DIR at a writable directory"
        )
    return None
