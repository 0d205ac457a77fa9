"""The CLI's bridge to the service package, for ``alto serve`` and ``alto token ...``.

The light client does not depend on the service; these commands import it only
when they run, and say how to install it when it is missing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from alto_client.errors import AltoError


class ServiceNotInstalled(AltoError):
    """The command needs the service package, which is not importable here."""


def _settings(**overrides: Any) -> Any:
    try:
        from service.settings import Settings
    except ImportError as exc:
        raise ServiceNotInstalled(
            "this command runs the service, which is not installed here "
            f"({exc.name or exc}); install the project with its service extra: "
            "pip install -e '.[engine,service]'"
        ) from None
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def serve_forever(
    *,
    host: str,
    port: int,
    data_dir: Path | None,
    database_url: str | None,
    ray_address: str | None,
) -> None:
    """Run the service until Ctrl-C (flags override ALTO_* variables)."""
    settings = _settings(data_dir=data_dir, database_url=database_url, ray_address=ray_address)
    from service.server import serve

    with contextlib.suppress(KeyboardInterrupt):
        serve(host, port, settings)


def create_token(
    *, owner: str, admin: bool, data_dir: Path | None, database_url: str | None
) -> str:
    """A new token stored (hashed) in the service's database; returned once."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from service.auth import create_token as issue
    from service.auth import validate_owner

    validate_owner(owner)
    return issue(settings, owner, admin)


def list_tokens(
    *, owner: str | None, data_dir: Path | None, database_url: str | None
) -> list[dict[str, Any]]:
    """Every token of the service's database (or one owner's), without the tokens."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from service.auth import list_tokens as listed
    from service.auth import token_store

    with token_store(settings) as factory:
        return [
            {
                "id": t.id,
                "owner": t.owner,
                "admin": t.admin,
                "created_at": t.created_at.isoformat(),
                "revoked": t.revoked,
                "hint": t.hint,
            }
            for t in listed(factory, owner)
        ]


def revoke_tokens(
    *,
    token_id: int | None,
    owner: str | None,
    data_dir: Path | None,
    database_url: str | None,
) -> int:
    """Revoke one token by id, or every token of an owner; how many were revoked."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from service.auth import revoke_tokens as revoke
    from service.auth import token_store

    with token_store(settings) as factory:
        return revoke(factory, token_id=token_id, owner=owner)
