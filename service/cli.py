"""`alto serve`, `alto token ...` and `alto demo`: the commands that run the service on
this machine. The service package plugs them into the light client's `alto` command
through the `alto.commands` entry point (`register`), so the client imports nothing of
the service, and a machine with only the client simply has no such commands.

Loading this module imports nothing else of the service: each command imports what it
runs, so `alto jobs` costs no FastAPI or SQLAlchemy import."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# `alto_client.cli` imports this module while it loads its plug-ins, so its helpers are
# reached lazily (below); importing them here would import a half-loaded module
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """The client CLI's error handling: one line on stderr and an exit code."""
    from alto_client.cli import cli_errors as client_errors

    with client_errors():
        yield


def print_json(value: Any) -> None:
    from alto_client.cli import print_json as client_print_json

    client_print_json(value)


def _exit_error() -> typer.Exit:
    from alto_client.cli import EXIT_ERROR

    return typer.Exit(EXIT_ERROR)


DataDirOpt = Annotated[
    Path | None, typer.Option(help="Data directory (default: ALTO_DATA_DIR or ~/.alto).")
]
DatabaseOpt = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data directory).")
]


def _settings(**overrides: Any) -> Any:
    """Settings from ALTO_* variables, with the flags that were given on top."""
    from service.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray job API URL (default: start a local Ray head for this service)."),
    ] = None,
) -> None:
    """Run the service (SQLite and a local Ray head unless configured otherwise)."""
    with cli_errors():
        settings = _settings(data_dir=data_dir, database_url=database_url, ray_address=ray_address)
        from service.server import serve as run

        with contextlib.suppress(KeyboardInterrupt):
            run(host, port, settings)


token_app = typer.Typer(help="Manage API tokens (in the service's database).", no_args_is_help=True)


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Who the token belongs to.")] = "admin",
    admin: Annotated[bool, typer.Option("--admin", help="May see every owner's jobs.")] = False,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token in the service's database and print it (shown once)."""
    with cli_errors():
        from service.auth import create_token, validate_owner

        validate_owner(owner)
        token = create_token(_settings(data_dir=data_dir, database_url=database_url), owner, admin)
        if as_json:
            print_json({"owner": owner, "admin": admin, "token": token})
        else:
            err_console.print(f"token for {owner}{' (admin)' if admin else ''}:")
            console.print(token)


@token_app.command("list")
def token_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's tokens.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List API tokens: id, owner, role, created, revoked, and the token's last characters."""
    with cli_errors():
        from service.auth import list_tokens, token_store

        with token_store(_settings(data_dir=data_dir, database_url=database_url)) as factory:
            rows = list_tokens(factory, owner)
        if as_json:
            print_json(
                [
                    {
                        "id": t.id,
                        "owner": t.owner,
                        "admin": t.admin,
                        "created_at": t.created_at.isoformat(),
                        "revoked": t.revoked,
                        "hint": t.hint,
                    }
                    for t in rows
                ]
            )
            return
        from rich.table import Table

        table = Table("id", "owner", "admin", "created", "revoked", "token", box=None)
        for t in rows:
            table.add_row(
                str(t.id),
                t.owner,
                "yes" if t.admin else "",
                t.created_at.strftime("%Y-%m-%d %H:%M"),
                "revoked" if t.revoked else "",
                t.hint or "",
            )
        console.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int | None, typer.Argument(help="Id from `alto token list`.")] = None,
    owner: Annotated[
        str | None, typer.Option(help="Revoke every token of this owner instead.")
    ] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a token (by id) or all of an owner's; running services refuse it within 5 s."""
    if (token_id is None) == (owner is None):
        raise typer.BadParameter("give a token id, or --owner NAME (not both)")
    with cli_errors():
        from service.auth import revoke_tokens, token_store

        with token_store(_settings(data_dir=data_dir, database_url=database_url)) as factory:
            n = revoke_tokens(factory, token_id=token_id, owner=owner)
    if n == 0:
        what = f"token {token_id}" if token_id is not None else f"tokens of {owner!r}"
        err_console.print(f"no unrevoked {what} found")
        raise _exit_error()
    err_console.print(f"revoked {n} token(s)")


def demo(
    steps: Annotated[
        int | None, typer.Option(help="Override training.steps (CI runs a reduced demo).", min=1)
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per arm.", min=1)] = 1,
    port: Annotated[
        int, typer.Option(help="Port of the embedded service (0: any free port).", min=0, max=65535)
    ] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the demo keeps its database, plot and report (default: .alto/demo)."
        ),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(help="Spec to compare (default: the shipped configs/tiny-moe-cpu.yaml)."),
    ] = None,
    keep_serving: Annotated[
        bool | None,
        typer.Option(
            "--keep-serving/--exit",
            help="Keep the dashboard up after the run until Ctrl-C (default: when interactive).",
        ),
    ] = None,
) -> None:
    """The one-command demo: ALTO vs AdamW on a tiny MoE GPT, on this machine."""
    with cli_errors():
        from service.demo import run_demo

        ok = run_demo(
            steps=steps,
            seeds=seeds,
            port=port,
            data_dir=data_dir,
            spec_path=spec,
            keep_serving=sys.stdin.isatty() if keep_serving is None else keep_serving,
            console=console,
        )
    if not ok:
        raise _exit_error()


def register(app: typer.Typer) -> None:
    """Add the service's commands to the `alto` app (the `alto.commands` entry point)."""
    app.command()(serve)
    app.add_typer(token_app, name="token")
    app.command()(demo)
