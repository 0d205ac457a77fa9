"""The ``alto`` command line: submit, watch, compare and report on training jobs.

Every command talks to the service over REST through ``alto_client.Client``;
only ``serve``, ``token create`` and ``demo`` need the service package, and
they import it when they run, so the CLI installs with the light client.
Errors print one line on stderr and exit non-zero: 1 for an error the server
or the input reported, 3 when the server cannot be reached (2 is typer's
usage error).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from alto_client.client import Client, load_spec
from alto_client.errors import AltoError, ApiError, ConnectionFailed, describe_validation_error
from alto_client.models import TERMINAL_STATUSES, JobStatus
from alto_client.render import comparison_table, comparisons_table, job_table, jobs_table
from alto_client.spec import JobSpec, SpecError

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="alto",
    help="Train MoE GPTs with ALTO or AdamW on a Ray cluster, and compare them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Manage API tokens (needs the service package).", no_args_is_help=True)
app.add_typer(token_app, name="token")

console = Console()
err_console = Console(stderr=True)


class _Ctx:
    """What the global options resolve to; one client per invocation."""

    def __init__(self, url: str | None, token: str | None, timeout: float) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def client(self) -> Client:
        return Client(self.url, self.token, timeout=self.timeout)


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and an exit code."""
    try:
        yield
    except ConnectionFailed as exc:
        raise _fail(
            f"{exc} (is `alto serve` running? set --url or ALTO_URL)", EXIT_UNREACHABLE
        ) from None
    except ApiError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        raise _fail(f"invalid {exc.title}: {describe_validation_error(exc)}") from None
    except SpecError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        raise _fail(f"{exc.source} is invalid: {problems}") from None
    except (AltoError, OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; jobs already submitted keep running", EXIT_INTERRUPTED) from None


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=2)
    elif isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
        text = json.dumps([v.model_dump(mode="json") for v in value], indent=2)
    else:
        text = json.dumps(value, indent=2, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``--set training.steps=20`` pairs; values are read as YAML scalars (numbers, bools)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set: expected FIELD=VALUE like training.steps=20, got {item!r}")
        out[key.strip()] = _yaml_scalar(raw.strip())
    return out


def _yaml_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _load(spec_path: Path, overrides: list[str] | None) -> JobSpec:
    spec = load_spec(spec_path)
    values = _parse_overrides(overrides)
    return spec.with_overrides(values) if values else spec


def _ended_ok(statuses: list[JobStatus]) -> bool:
    return all(s == JobStatus.SUCCEEDED for s in statuses)


UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar="ALTO_URL", help="Service URL (default: http://127.0.0.1:8000)."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="ALTO_TOKEN", help="Bearer API token.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec field: --set training.steps=20 (repeatable)."),
]


@app.callback()
def main(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    timeout: Annotated[float, typer.Option(help="HTTP timeout in seconds.", min=0.1)] = 30.0,
) -> None:
    """Global options apply to every command that talks to the service."""
    ctx.obj = _Ctx(url, token, timeout)


# --------------------------------------------------------------------------- jobs


@app.command()
def submit(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.")],
    overrides: SetOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a training job."""
    with _errors(), ctx.obj.client() as client:
        job = client.submit(_load(spec, overrides))
        if as_json and not watch:
            _print_json(job)
            return
        err_console.print(
            f"submitted job [bold]{job.id}[/] ({job.name}), status {job.status.value}"
        )
        if not watch:
            console.print(job.id)
            return
        from alto_client.watch import watch_jobs

        (final,) = watch_jobs(client, [job.id], console=err_console)
        if as_json:
            _print_json(final)
        else:
            console.print(job_table(final))
        if final.status != JobStatus.SUCCEEDED:
            raise _fail(f"job {final.id} ended {final.status.value}: {final.status_reason or ''}")


@app.command()
def jobs(
    ctx: typer.Context,
    status: Annotated[
        JobStatus | None, typer.Option(help="Only jobs in this status.", case_sensitive=False)
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only jobs with this tag.")] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner's jobs (admin).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs.", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with _errors(), ctx.obj.client() as client:
        items = list(client.jobs(status=status, tag=tag, owner=owner, limit=limit))
        if as_json:
            _print_json(items)
        elif not items:
            err_console.print("no jobs")
        else:
            console.print(jobs_table(items))


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one job: status, timestamps and latest metrics."""
    with _errors(), ctx.obj.client() as client:
        job = client.job(job_id)
        if as_json:
            _print_json(job)
        else:
            console.print(job_table(job))


@app.command()
def watch(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(help="Job id(s).")],
    interval: Annotated[float, typer.Option(help="Seconds between updates.", min=0.1)] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow jobs live: step, loss, validation loss, tokens/s and ETA, until they end."""
    from alto_client.watch import watch_jobs

    with _errors(), ctx.obj.client() as client:
        final = watch_jobs(client, job_ids, console=err_console, interval=interval)
        if as_json:
            _print_json(final)
        failed = [j for j in final if j.status != JobStatus.SUCCEEDED]
        if failed:
            j = failed[0]
            raise _fail(f"job {j.id} ended {j.status.value}: {j.status_reason or ''}")


@app.command()
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    tail_bytes: Annotated[
        int | None, typer.Option(help="Only the last N bytes of the log.", min=1)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a job's logs (the Ray job's driver output)."""
    with _errors(), ctx.obj.client() as client:
        text = client.logs(job_id, tail_bytes=tail_bytes)
        if as_json:
            _print_json({"job_id": job_id, "logs": text})
        else:
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel a job (stops its Ray job)."""
    with _errors(), ctx.obj.client() as client:
        job = client.cancel(job_id)
        if as_json:
            _print_json(job)
        else:
            console.print(f"job {job.id}: {job.status.value}")


@app.command()
def delete(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(help="Job ids (comparison ids with --comparison).")],
    comparison: Annotated[
        bool,
        typer.Option("--comparison", help="The ids are comparisons: delete them and their jobs."),
    ] = False,
) -> None:
    """Delete ended jobs, or whole comparisons, with their metric histories."""
    kind = "comparison" if comparison else "job"
    with _errors(), ctx.obj.client() as client:
        for object_id in ids:
            if comparison:
                client.delete_comparison(object_id)
            else:
                client.delete(object_id)
            console.print(f"deleted {kind} {object_id}")


# --------------------------------------------------------------------------- comparisons


@app.command()
def compare(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.")],
    arms: Annotated[
        list[str] | None,
        typer.Option(
            "--arm",
            help="An arm: NAME or NAME:key=value,... (e.g. adamw:lr=3e-4); repeat per arm.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per arm (from the spec's seed on).", min=1)] = 1,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline arm (default: adamw, else the first arm).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the comparison.")] = None,
    overrides: SetOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the jobs until they end.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the spec once per arm and seed, differing only in optimizer and seed."""
    with _errors(), ctx.obj.client() as client:
        comp = client.compare(
            _load(spec, overrides),
            arms or ["alto", "adamw"],
            seeds,
            baseline=baseline,
            name=name,
        )
        if not watch:
            if as_json:
                _print_json(comp)
            else:
                err_console.print(
                    f"comparison [bold]{comp.id}[/]: {sum(len(a.job_ids) for a in comp.arms)} "
                    f"jobs; see `alto report {comp.id}`"
                )
                console.print(comp.id)
            return
        from alto_client.watch import watch_jobs

        job_ids = [j for arm in comp.arms for j in arm.job_ids]
        err_console.print(f"comparison [bold]{comp.id}[/]: watching {len(job_ids)} jobs")
        final = watch_jobs(client, job_ids, console=err_console)
        comp = client.comparison(comp.id)
        if as_json:
            _print_json(comp)
        else:
            console.print(comparison_table(comp))
        if not _ended_ok([j.status for j in final]):
            bad = next(j for j in final if j.status != JobStatus.SUCCEEDED)
            raise _fail(f"job {bad.id} ended {bad.status.value}: {bad.status_reason or ''}")


@app.command()
def comparisons(
    ctx: typer.Context,
    owner: Annotated[
        str | None, typer.Option(help="Only this owner's comparisons (admin).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many comparisons.", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List comparisons, newest first (`alto report ID` shows one's results)."""
    with _errors(), ctx.obj.client() as client:
        items = list(client.comparisons(owner=owner, limit=limit))
        if as_json:
            _print_json(items)
        elif not items:
            err_console.print("no comparisons")
        else:
            console.print(comparisons_table(items))


@app.command()
def report(
    ctx: typer.Context,
    comparison_id: Annotated[str, typer.Argument(help="Comparison id.")],
    out: Annotated[
        Path | None, typer.Option(help="Also write the report: .html (table + plot) or .png.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a comparison's summary table; --out writes the curves too."""
    from alto_client.report import write_report

    with _errors(), ctx.obj.client() as client:
        comp = client.comparison(comparison_id)
        if as_json:
            _print_json(comp)
        else:
            console.print(comparison_table(comp))
            if comp.status not in TERMINAL_STATUSES:
                err_console.print(f"(comparison still {comp.status.value}: numbers are partial)")
        if out is not None:
            written = write_report(client, comparison_id, out)
            err_console.print(f"wrote {written}")


# --------------------------------------------------------------------------- service side


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (default: ALTO_DATA_DIR or ~/.alto).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data directory).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray job API URL (default: start a local Ray head for this service)."),
    ] = None,
) -> None:
    """Run the service (SQLite and a local Ray head unless configured otherwise)."""
    with _errors():
        from alto_client._service import serve_forever

        serve_forever(
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            ray_address=ray_address,
        )


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Who the token belongs to.")] = "admin",
    admin: Annotated[bool, typer.Option("--admin", help="May see every owner's jobs.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (default: ALTO_DATA_DIR or ~/.alto).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data directory).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token in the service's database and print it (shown once)."""
    with _errors():
        from alto_client._service import create_token

        token = create_token(owner=owner, admin=admin, data_dir=data_dir, database_url=database_url)
        if as_json:
            _print_json({"owner": owner, "admin": admin, "token": token})
        else:
            err_console.print(f"token for {owner}{' (admin)' if admin else ''}:")
            console.print(token)


DataDirOpt = Annotated[
    Path | None, typer.Option(help="Data directory (default: ALTO_DATA_DIR or ~/.alto).")
]
DatabaseOpt = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data directory).")
]


@token_app.command("list")
def token_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's tokens.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List API tokens: id, owner, role, created, revoked, and the token's last characters."""
    with _errors():
        from alto_client._service import list_tokens

        rows = list_tokens(owner=owner, data_dir=data_dir, database_url=database_url)
        if as_json:
            _print_json(rows)
            return
        table = Table("id", "owner", "admin", "created", "revoked", "token", box=None)
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["owner"],
                "yes" if r["admin"] else "",
                r["created_at"][:19].replace("T", " "),
                "revoked" if r["revoked"] else "",
                r["hint"] or "",
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
    with _errors():
        if (token_id is None) == (owner is None):
            raise typer.BadParameter("give a token id, or --owner NAME (not both)")
        from alto_client._service import revoke_tokens

        n = revoke_tokens(
            token_id=token_id, owner=owner, data_dir=data_dir, database_url=database_url
        )
        if n == 0:
            what = f"token {token_id}" if token_id is not None else f"tokens of {owner!r}"
            err_console.print(f"no unrevoked {what} found")
            raise typer.Exit(1)
        err_console.print(f"revoked {n} token(s)")


@app.command()
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
        Path | None, typer.Option(help="Spec to compare (default: configs/tiny-moe-cpu.yaml).")
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
    with _errors():
        from alto_client.demo import run_demo

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
        raise typer.Exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    app()
