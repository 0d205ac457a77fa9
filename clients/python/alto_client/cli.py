"""The ``alto`` command line: submit, watch, compare and report on training jobs.

Every command talks to the service over REST through ``alto_client.Client``.
``serve``, ``token`` and ``demo`` run the service on this machine: they come with the
service package, which plugs them in through the ``alto.commands`` entry points, so
the CLI installs with the light client alone.
Errors print one line on stderr and exit non-zero: 1 for an error the server
or the input reported, 3 when the server cannot be reached (2 is typer's
usage error).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from alto_client.client import Client, load_spec
from alto_client.errors import AltoError, ApiError, ConnectionFailed, describe_validation_error
from alto_client.models import TERMINAL_STATUSES, JobStatus
from alto_client.render import comparison_table, comparisons_table, job_table, jobs_table
from alto_client.spec import JobSpec, SpecError, parse_overrides

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
PLUGIN_GROUP = "alto.commands"

console = Console()
err_console = Console(stderr=True)


class _Ctx:
    """What the global options resolve to; one client per invocation."""

    def __init__(self, url: str | None, token: str | None, timeout: float, wide: bool) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.wide = wide

    @property
    def table_width(self) -> int | None:
        """The width tables are laid out for (None: every column)."""
        return None if self.wide else console.width

    def client(self) -> Client:
        return Client(self.url, self.token, timeout=self.timeout)


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and an exit code."""
    try:
        yield
    except ConnectionFailed as exc:
        raise fail(
            f"{exc} (is `alto serve` running? set --url or ALTO_URL)", EXIT_UNREACHABLE
        ) from None
    except ApiError as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        raise fail(f"invalid {exc.title}: {describe_validation_error(exc)}") from None
    except SpecError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        raise fail(f"{exc.source} is invalid: {problems}") from None
    except (AltoError, OSError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; jobs already submitted keep running", EXIT_INTERRUPTED) from None


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=2)
    elif isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
        text = json.dumps([v.model_dump(mode="json") for v in value], indent=2)
    else:
        text = json.dumps(value, indent=2, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _load(spec_path: Path, overrides: list[str] | None) -> JobSpec:
    spec = load_spec(spec_path)
    values = parse_overrides(overrides)
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
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Tables with every column, whatever the terminal's width (default: every "
            "column from 120 columns on; fewer, whole columns below, and in pipes).",
        ),
    ] = False,
) -> None:
    """Global options apply to every command that talks to the service."""
    ctx.obj = _Ctx(url, token, timeout, wide)


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
    with cli_errors(), ctx.obj.client() as client:
        job = client.submit(_load(spec, overrides))
        if as_json and not watch:
            print_json(job)
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
            print_json(final)
        else:
            console.print(job_table(final))
        if final.status != JobStatus.SUCCEEDED:
            raise fail(f"job {final.id} ended {final.status.value}: {final.status_reason or ''}")


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
    with cli_errors(), ctx.obj.client() as client:
        items = list(client.jobs(status=status, tag=tag, owner=owner, limit=limit))
        if as_json:
            print_json(items)
        elif not items:
            err_console.print("no jobs")
        else:
            console.print(jobs_table(items, ctx.obj.table_width))


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one job: status, timestamps and latest metrics."""
    with cli_errors(), ctx.obj.client() as client:
        job = client.job(job_id)
        if as_json:
            print_json(job)
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

    with cli_errors(), ctx.obj.client() as client:
        final = watch_jobs(client, job_ids, console=err_console, interval=interval)
        if as_json:
            print_json(final)
        failed = [j for j in final if j.status != JobStatus.SUCCEEDED]
        if failed:
            j = failed[0]
            raise fail(f"job {j.id} ended {j.status.value}: {j.status_reason or ''}")


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
    with cli_errors(), ctx.obj.client() as client:
        text = client.logs(job_id, tail_bytes=tail_bytes)
        if as_json:
            print_json({"job_id": job_id, "logs": text})
        else:
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel a job (stops its Ray job)."""
    with cli_errors(), ctx.obj.client() as client:
        job = client.cancel(job_id)
        if as_json:
            print_json(job)
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
    with cli_errors(), ctx.obj.client() as client:
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
    with cli_errors(), ctx.obj.client() as client:
        comp = client.compare(
            _load(spec, overrides),
            arms or ["alto", "adamw"],
            seeds,
            baseline=baseline,
            name=name,
        )
        if not watch:
            if as_json:
                print_json(comp)
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
            print_json(comp)
        else:
            console.print(comparison_table(comp, ctx.obj.table_width))
        if not _ended_ok([j.status for j in final]):
            bad = next(j for j in final if j.status != JobStatus.SUCCEEDED)
            raise fail(f"job {bad.id} ended {bad.status.value}: {bad.status_reason or ''}")


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
    with cli_errors(), ctx.obj.client() as client:
        items = list(client.comparisons(owner=owner, limit=limit))
        if as_json:
            print_json(items)
        elif not items:
            err_console.print("no comparisons")
        else:
            console.print(comparisons_table(items, ctx.obj.table_width))


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

    with cli_errors(), ctx.obj.client() as client:
        comp = client.comparison(comparison_id)
        if as_json:
            print_json(comp)
        else:
            console.print(comparison_table(comp, ctx.obj.table_width))
            if comp.status not in TERMINAL_STATUSES:
                err_console.print(f"(comparison still {comp.status.value}: numbers are partial)")
        if out is not None:
            written = write_report(client, comparison_id, out)
            err_console.print(f"wrote {written}")


# --------------------------------------------------------------------------- studies

study_app = typer.Typer(
    help="Tuned ALTO-vs-baseline studies across batch sizes: plan, submit, watch, report.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")

StudyFileArg = Annotated[
    Path, typer.Argument(help="Study file, YAML or JSON (see configs/study-*.yaml).")
]
OutOpt = Annotated[Path | None, typer.Option(help="Also save the study's plot (PNG) here.")]


def _show_study(
    client: Client, study: Any, as_json: bool, out: Path | None, width: int | None
) -> None:
    from alto_client.render_study import study_tables

    if as_json:
        print_json(study)
    else:
        console.print(study_tables(study, width))
    if out is not None:
        err_console.print(f"wrote {client.study_plot(study.id, out)}")


def _watch_study(client: Client, study_id: str, interval: float) -> Any:
    """Print the study's phase and job counts whenever they change, until it ends."""
    import time

    last = None
    while True:
        study = client.study(study_id)
        line = f"{study.phase}: " + ", ".join(
            f"{k.lower()} {v}" for k, v in sorted(study.jobs.items())
        )
        if line != last:
            err_console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] study {study_id} {line}")
            last = line
        if study.status in TERMINAL_STATUSES:
            return study
        time.sleep(interval)


@study_app.command("plan")
def study_plan(ctx: typer.Context, study_file: StudyFileArg, as_json: JsonOpt = False) -> None:
    """Print what the study would run and cost (a dry run: nothing starts)."""
    from alto_client.render_study import plan_table

    with cli_errors(), ctx.obj.client() as client:
        plan = client.plan_study(study_file)
        if as_json:
            print_json(plan)
        else:
            console.print(plan_table(plan))


@study_app.command("submit")
def study_submit(
    ctx: typer.Context,
    study_file: StudyFileArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the plan; start nothing.")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.5)] = 10.0,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a study: tuning trials per arm and batch size, then the winners with every
    seed. The plan is printed first."""
    from alto_client.render_study import plan_table

    if dry_run:
        study_plan(ctx, study_file, as_json)
        return
    with cli_errors(), ctx.obj.client() as client:
        study = client.submit_study(study_file)
        if not as_json:
            console.print(plan_table(study.plan))
            err_console.print(f"study [bold]{study.id}[/]: {study.plan.jobs} jobs planned")
            console.print(study.id)
        if not watch:
            if as_json:
                print_json(study)
            return
        study = _watch_study(client, study.id, interval)
        _show_study(client, study, as_json, out, ctx.obj.table_width)
        if study.status is not JobStatus.SUCCEEDED:
            raise fail(f"study {study.id} ended {study.status.value}: {study.phase_reason or ''}")


@study_app.command("show")
def study_show(
    ctx: typer.Context,
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    watch: Annotated[bool, typer.Option("--watch", help="Wait until it ends first.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.5)] = 10.0,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The study's summary: per batch size, every arm against the tuned baseline."""
    with cli_errors(), ctx.obj.client() as client:
        study = _watch_study(client, study_id, interval) if watch else client.study(study_id)
        _show_study(client, study, as_json, out, ctx.obj.table_width)
        if study.status not in TERMINAL_STATUSES and not as_json:
            err_console.print(f"(study still in its {study.phase} phase: numbers are partial)")


@study_app.command("list")
def study_list(
    ctx: typer.Context,
    owner: Annotated[str | None, typer.Option(help="Only this owner's studies (admin).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many studies.", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List studies, newest first."""
    from alto_client.render_study import studies_table

    with cli_errors(), ctx.obj.client() as client:
        items = list(client.studies(owner=owner, limit=limit))
        if as_json:
            print_json(items)
        elif not items:
            err_console.print("no studies")
        else:
            console.print(studies_table(items, ctx.obj.table_width))


@study_app.command("cancel")
def study_cancel(
    ctx: typer.Context, study_id: Annotated[str, typer.Argument(help="Study id.")]
) -> None:
    """Cancel a study and every unfinished job of it."""
    with cli_errors(), ctx.obj.client() as client:
        study = client.cancel_study(study_id)
        err_console.print(f"study {study.id}: {study.phase} ({study.phase_reason})")


@study_app.command("delete")
def study_delete(
    ctx: typer.Context, study_ids: Annotated[list[str], typer.Argument(help="Study ids.")]
) -> None:
    """Delete ended studies with their jobs and metrics."""
    with cli_errors(), ctx.obj.client() as client:
        for study_id in study_ids:
            client.delete_study(study_id)
            err_console.print(f"deleted study {study_id}")


# --------------------------------------------------------------------------- plug-ins


def _load_plugins() -> None:
    """Commands other installed packages add to `alto` (entry-point group `alto.commands`,
    each a function given the typer app): the service package adds `serve`, `token` and
    `demo`. The light client itself imports nothing of the service."""
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            register = entry.load()
        except ImportError as exc:
            # an image with the project's metadata but not that package (the engine image
            # has no service): nothing to offer; anything else broken is said
            if not (
                isinstance(exc, ModuleNotFoundError) and entry.module.startswith(str(exc.name))
            ):
                err_console.print(f"(alto: commands of {entry.value} unavailable: {exc})")
            continue
        register(app)


if __name__ == "__main__":  # pragma: no cover
    # `python -m alto_client.cli`: run the importable module's app, which holds the
    # plug-ins (they import alto_client.cli, which is not this __main__ copy)
    from alto_client.cli import app as _app

    _app()
else:
    _load_plugins()
