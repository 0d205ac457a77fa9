"""The service on a shared cluster: each finding of the attack on it, as a test that fails
on the code before the fix (issue 15)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from svc_fakes import FakeCluster, tiny_spec

from service.app import create_app
from service.auth import (
    issue_token,
    list_tokens,
    lookup_token,
    revoke_tokens,
    serve_admin_token,
    token_store,
)
from service.db.tables import JobRow
from service.headers import SECURITY_HEADERS
from service.settings import Settings

SURROGATE = "\ud800"


def _post_raw(svc, path: str, body: str, headers: dict[str, str]):
    # json.dumps writes a lone surrogate as the escape \ud800: legal JSON text
    return svc.client.post(
        path, content=body.encode(), headers={**headers, "Content-Type": "application/json"}
    )


# ---------------------------------------------------------------- 1: invalid Unicode


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        (
            ["body", "data", "files", 0],
            lambda s: s["data"].update(source="files", files=["/d/\ud800.txt"]),
        ),
        (["body", "name"], lambda s: s.update(name="x" + SURROGATE)),
        (["body", "tags", 0], lambda s: s.update(tags=[SURROGATE])),
        (["body", "data", "jsonl_key"], lambda s: s["data"].update(jsonl_key=SURROGATE)),
    ],
)
def test_a_lone_surrogate_is_refused_with_its_field_and_nothing_is_stored(svc, field, mutate):
    spec = tiny_spec()
    spec.setdefault("data", {})
    mutate(spec)
    r = _post_raw(svc, "/v1/jobs", json.dumps(spec), svc.alice)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["errors"][0]["loc"] == field
    assert "surrogate" in body["message"] and body["errors"][0]["type"] == "string_unicode"
    # nothing was stored, so no listing and no scheduler pass can trip on it
    assert svc.client.get("/v1/jobs", headers=svc.alice).json()["items"] == []
    svc.tick()
    assert svc.app.state.svc.scheduler.last_error is None


def test_surrogates_in_keys_comparisons_and_uploads_are_refused(svc):
    spec = tiny_spec()
    bad_key = json.dumps({**spec, "x\ud800": 1})
    r = _post_raw(svc, "/v1/jobs", bad_key, svc.alice)
    assert r.status_code == 422 and "surrogate" in r.text
    arms = [
        {"name": "alto", "optimizer": {"name": "alto"}},
        {"name": "adamw", "optimizer": {"name": "adamw"}},
    ]
    comp = {"spec": spec, "arms": arms, "seeds": [0], "baseline": "adamw", "name": SURROGATE}
    r = _post_raw(svc, "/v1/comparisons", json.dumps(comp), svc.alice)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "name"]
    job = svc.client.post("/v1/jobs", json=spec, headers=svc.alice).json()
    svc.tick()
    h = {"Authorization": f"Bearer {svc.ingest_token(job['id'])}"}
    point = {"step": 1, "name": "a" + SURROGATE, "value": 1.0, "time": 1.0}
    r = _post_raw(svc, f"/v1/jobs/{job['id']}/metrics", json.dumps({"points": [point]}), h)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "points", 0, "name"]


# ---------------------------------------------------------------- 1: a bad job fails alone


def _store_spec(svc, job_id: str, spec: dict) -> None:
    """Put a spec into a stored job behind the API's back (a row from an older version)."""
    with svc.app.state.svc.factory() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(spec=spec))
        s.commit()


def test_a_job_that_cannot_launch_fails_alone_and_never_blocks_a_pass(svc):
    bad = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    big = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    good = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.bob).json()
    broken = tiny_spec()
    broken["training"]["micro_batch_size"] = 3  # no longer validates
    _store_spec(svc, bad["id"], broken)
    huge = tiny_spec()
    huge["tags"] = ["t" * 100] * 1200  # over what one environment variable can carry
    _store_spec(svc, big["id"], {**huge, "report": None})
    svc.tick()
    jobs = {j["id"]: j for j in svc.client.get("/v1/jobs", headers=svc.admin).json()["items"]}
    assert jobs[bad["id"]]["status"] == "FAILED"
    assert "cannot be launched" in jobs[bad["id"]]["status_reason"]
    assert jobs[big["id"]]["status"] == "FAILED"
    assert "can travel to the cluster" in jobs[big["id"]]["status_reason"]
    assert jobs[good["id"]]["status"] == "QUEUED"  # admitted in the same pass
    assert f"alto-{good['id']}" in svc.cluster.jobs
    sched = svc.app.state.svc.scheduler
    assert sched.stats.unlaunchable_jobs == 2 and sched.last_error is None
    assert svc.client.get("/readyz").status_code == 200


def test_an_unexpected_error_counts_as_a_failed_pass_and_shows_in_readiness(svc, monkeypatch):
    sched = svc.app.state.svc.scheduler

    def broken() -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(sched, "_reconcile", broken)
    sched.run_once()  # survives
    assert sched.stats.failed_passes == 1
    r = svc.client.get("/readyz")
    assert r.status_code == 503
    assert "database went away" in r.json()["checks"]["scheduler"]
    text = svc.client.get("/metrics", headers=svc.admin).text
    assert "alto_scheduler_failed_passes_total 1.0" in text


# ---------------------------------------------------------------- 2 and 10: paths


def _svc_with(db_backend, tmp_path, settings_factory, **overrides):
    settings = settings_factory(db_backend, tmp_path, **overrides)
    cluster = FakeCluster(nodes=[{"CPU": 4.0}])
    app = create_app(settings, backend=cluster, start_scheduler=False)
    return app, cluster


def _files_spec(*files: str) -> dict:
    spec = tiny_spec()
    spec["data"] = {"source": "files", "files": list(files)}
    return spec


def test_data_paths_need_a_root_and_stay_inside_it(db_backend, tmp_path, settings_factory):
    # no roots configured: only the built-in corpus
    app, _ = _svc_with(db_backend, tmp_path / "a", settings_factory)
    factory = app.state.svc.factory
    alice = {"Authorization": f"Bearer {issue_token(factory, 'alice')}"}
    with TestClient(app) as c:
        r = c.post("/v1/jobs", json=_files_spec("/etc/passwd.txt"), headers=alice)
        assert r.status_code == 422
        assert r.json()["errors"][0]["loc"] == ["body", "data", "source"]
        assert "no data roots" in r.text
        r = c.post(
            "/v1/jobs",
            json={**tiny_spec(), "data": {"source": "indexed", "path": "/x/y"}},
            headers=alice,
        )
        assert r.status_code == 422 and "no data roots" in r.text

    roots = "/shared/datasets:/shared/users/{owner}"
    app, cluster = _svc_with(db_backend, tmp_path / "b", settings_factory, data_roots=roots)
    factory = app.state.svc.factory
    alice = {"Authorization": f"Bearer {issue_token(factory, 'alice')}"}
    with TestClient(app) as c:
        for path, why in [
            ("/shared/users/bob/secret.txt", "outside the data roots allowed for you"),
            ("/shared/users/alice/../bob/secret.txt", "must not contain '..'"),
            ("users/alice/a.txt", "must be an absolute path"),
            ("/etc/passwd.txt", "outside the data roots"),
            ("/shared/datasets-evil/a.txt", "outside the data roots"),
        ]:
            r = c.post("/v1/jobs", json=_files_spec(path), headers=alice)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["errors"][0]["loc"] == ["body", "data", "files", 0]
            assert why in r.text
            assert "/shared/users/alice" in r.text  # the allowed roots are named
        ok = _files_spec("/shared/datasets/wiki.jsonl", "/shared/users/alice/mine.txt")
        job = c.post("/v1/jobs", json=ok, headers=alice).json()
        assert job["status"] == "PENDING"
        app.state.svc.scheduler.run_once()
        env = cluster.jobs[f"alto-{job['id']}"].env
        # the engine gets the owner's roots from the service, never from the spec
        assert env["ALTO_DATA_ROOTS"] == "/shared/datasets:/shared/users/alice"
        r = c.post("/v1/jobs", json={**tiny_spec(), "data": {"cache_dir": "/tmp/x"}}, headers=alice)
        assert r.status_code == 422 and "ALTO_CACHE_DIR" in r.text


def test_owner_names_that_could_climb_out_never_fill_a_root(tmp_path):
    settings = Settings(data_dir=tmp_path, data_roots="/d:/home/{owner}")
    assert settings.roots_for("alice") == ["/d", "/home/alice"]
    for owner in ("..", "a/b", "x y", "."):
        assert settings.roots_for(owner) == ["/d"]
    with pytest.raises(ValueError, match="absolute path"):
        Settings(data_dir=tmp_path, data_roots="relative/dir")
    with pytest.raises(ValueError, match="absolute path"):
        Settings(data_dir=tmp_path, data_roots="/a/../b")


# ---------------------------------------------------------------- 4: bodies before auth


def _asgi_post(app, path: str, headers: list[tuple[bytes, bytes]], body: bytes):
    """Drive one POST through the ASGI app; returns (status, whether the body was read)."""
    read = False
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        read = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], read


def test_an_unauthenticated_body_is_refused_before_it_is_read(svc):
    app = svc.app
    body = json.dumps(tiny_spec()).encode()
    length = [(b"content-length", str(len(body)).encode())]
    for headers in ([], [(b"authorization", b"Bearer alto_wrong")], [(b"authorization", b"x")]):
        for path in ("/v1/jobs", "/v1/comparisons", "/v1/jobs/abc/metrics"):
            status, read = _asgi_post(app, path, [*headers, *length], body)
            assert (status, read) == (401, False), (path, headers)
    job = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    svc.tick()
    # an API token is not an ingestion token, and the reverse
    alice = [(b"authorization", svc.alice["Authorization"].encode())]
    status, read = _asgi_post(app, f"/v1/jobs/{job['id']}/metrics", [*alice, *length], body)
    assert (status, read) == (401, False)
    ingest = [(b"authorization", f"Bearer {svc.ingest_token(job['id'])}".encode())]
    status, read = _asgi_post(app, "/v1/jobs", [*ingest, *length], body)
    assert (status, read) == (401, False)
    status, read = _asgi_post(app, "/v1/jobs", [*alice, *length], body)
    assert (status, read) == (202, True)


def test_metric_uploads_are_parsed_off_the_event_loop(svc, monkeypatch):
    import service.ingest as ingest

    on_loop: list[bool] = []
    real = ingest.parse_upload

    def watched(raw: bytes, limit: int):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(raw, limit)

    monkeypatch.setattr(ingest, "parse_upload", watched)
    job = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    svc.tick()
    h = {"Authorization": f"Bearer {svc.ingest_token(job['id'])}"}
    points = [{"step": i, "name": "train/loss", "value": 1.0, "time": 1.0} for i in range(2500)]
    r = svc.client.post(f"/v1/jobs/{job['id']}/metrics", json={"points": points}, headers=h)
    assert r.json() == {"accepted": 2500, "duplicates": 0}
    assert on_loop == [False]
    # errors across validation pieces keep their absolute index
    points[1700]["step"] = -1
    r = svc.client.post(f"/v1/jobs/{job['id']}/metrics", json={"points": points}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "points", 1700, "step"]
    limit = svc.app.state.svc.settings.max_metric_points_per_request
    many = [{"step": i, "name": "x", "value": 1.0, "time": 1.0} for i in range(limit + 1)]
    r = svc.client.post(f"/v1/jobs/{job['id']}/metrics", json={"points": many}, headers=h)
    assert r.status_code == 413 and f"at most {limit} points" in r.text


# ---------------------------------------------------------------- 5: spec size


def test_a_spec_too_large_for_the_cluster_is_refused_at_submission(
    db_backend, tmp_path, settings_factory
):
    app, _ = _svc_with(db_backend, tmp_path, settings_factory, data_roots="/d", max_spec_bytes=4096)
    alice = {"Authorization": f"Bearer {issue_token(app.state.svc.factory, 'alice')}"}
    with TestClient(app) as c:
        spec = _files_spec(*[f"/d/file-{i:04d}.txt" for i in range(300)])
        r = c.post("/v1/jobs", json=spec, headers=alice)
        assert r.status_code == 413, r.text
        assert "over the limit of 4096 bytes (max_spec_bytes)" in r.text
        arms = [
            {"name": "alto", "optimizer": {"name": "alto"}},
            {"name": "adamw", "optimizer": {"name": "adamw"}},
        ]
        comp = {"spec": spec, "arms": arms, "seeds": [0], "baseline": "adamw"}
        r = c.post("/v1/comparisons", json=comp, headers=alice)
        assert r.status_code == 413
        assert c.get("/v1/jobs", headers=alice).json()["items"] == []


def test_stored_spec_cap_stays_below_what_one_environment_variable_holds():
    from service.specs import MAX_SPEC_ENV_BYTES

    largest = Settings.model_fields["max_spec_bytes"].metadata
    cap = next(m.le for m in largest if getattr(m, "le", None) is not None)
    assert cap + 4096 <= MAX_SPEC_ENV_BYTES < 128 * 1024


# ---------------------------------------------------------------- 9: ingestion tokens


def test_an_ingestion_token_dies_with_its_job(svc):
    job = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    svc.tick()
    token = svc.ingest_token(job["id"])
    h = {"Authorization": f"Bearer {token}"}
    url = f"/v1/jobs/{job['id']}/metrics"
    point = {"step": 999, "name": "val/loss", "value": 2.5, "time": 1.0}
    assert svc.client.post(url, json={"points": [point]}, headers=h).status_code == 200
    svc.cluster.set(f"alto-{job['id']}", "RUNNING")
    svc.tick()
    svc.cluster.set(f"alto-{job['id']}", "SUCCEEDED")
    svc.tick()
    assert (
        svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()["status"] == "SUCCEEDED"
    )
    forged = {**point, "step": 1000, "value": 0.001}
    r = svc.client.post(url, json={"points": [forged]}, headers=h)
    assert r.status_code == 401 and "valid only while it runs" in r.text
    hist = svc.client.get(f"{url}?names=val/loss", headers=svc.alice).json()
    assert hist["series"][0]["values"] == [2.5]
    with svc.app.state.svc.factory() as s:
        assert s.scalar(select(JobRow.ingest_token_hash).where(JobRow.id == job["id"])) is None


# ---------------------------------------------------------------- low: tokens


def test_tokens_can_be_listed_and_revoked(svc, tmp_path):
    factory = svc.app.state.svc.factory
    carol = issue_token(factory, "carol")
    rows = list_tokens(factory, "carol")
    assert len(rows) == 1 and rows[0].hint == "..." + carol[-6:] and not rows[0].revoked
    assert carol not in repr(rows)
    h = {"Authorization": f"Bearer {carol}"}
    assert svc.client.get("/v1/jobs", headers=h).status_code == 200
    assert revoke_tokens(factory, token_id=rows[0].id) == 1
    assert lookup_token(factory, carol) is None
    svc.app.state.svc.tokens._entries.clear()  # the cache would forget it within 5 s
    assert svc.client.get("/v1/jobs", headers=h).status_code == 401
    assert revoke_tokens(factory, owner="alice") == 1
    with pytest.raises(ValueError):
        revoke_tokens(factory)


def test_serve_reuses_its_admin_token_instead_of_minting_one_per_start(tmp_path):
    settings = Settings(data_dir=tmp_path)
    first = serve_admin_token(settings)
    assert serve_admin_token(settings) == first
    kept = tmp_path / "admin-token"
    assert kept.read_text().strip() == first
    assert (kept.stat().st_mode & 0o777) == 0o600
    with token_store(settings) as factory:
        assert len(list_tokens(factory)) == 1
        revoke_tokens(factory, owner="admin")
    second = serve_admin_token(settings)  # a revoked token is replaced
    assert second != first
    with token_store(settings) as factory:
        assert [t.revoked for t in list_tokens(factory)] == [True, False]
    assert serve_admin_token(Settings(data_dir=tmp_path, admin_token="alto_fixed")) == "alto_fixed"


# ---------------------------------------------------------------- low: comparisons, pages


def test_a_reused_comparison_key_with_another_body_gets_409(svc):
    arms = [
        {"name": "alto", "optimizer": {"name": "alto"}},
        {"name": "adamw", "optimizer": {"name": "adamw"}},
    ]
    body = {"spec": tiny_spec(), "arms": arms, "seeds": [0], "baseline": "adamw"}
    h = {**svc.alice, "Idempotency-Key": "k1"}
    first = svc.client.post("/v1/comparisons", json=body, headers=h)
    again = svc.client.post("/v1/comparisons", json=body, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = svc.client.post("/v1/comparisons", json={**body, "seeds": [0, 1]}, headers=h)
    assert other.status_code == 409 and first.json()["id"] in other.text


def test_security_headers_on_every_answer_and_docs_without_a_cdn(svc):
    answers = [
        svc.client.get("/"),
        svc.client.get("/jobs/abc"),
        svc.client.get("/v1/jobs", headers=svc.alice),
        svc.client.get("/v1/jobs"),  # 401
        svc.client.post("/v1/jobs", json={}),  # 401 from the body guard
        svc.client.get("/docs"),
        svc.client.get("/openapi.json"),
        svc.client.get("/healthz"),
    ]
    for r in answers:
        for name, value in SECURITY_HEADERS:
            assert r.headers.get(name.decode()) == value.decode(), (r.url, name)
    page = svc.client.get("/docs").text
    assert "http://" not in page and "https://" not in page
    assert "<script>" not in page  # no inline script: the CSP allows none
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "docs-init.js"):
        r = svc.client.get(f"/docs/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 100, asset
    assert svc.client.get("/docs/static/..%2Fapp.py").status_code == 404
    schema = svc.client.get("/openapi.json").json()
    upload = schema["paths"]["/v1/jobs/{job_id}/metrics"]["post"]["requestBody"]
    ref = upload["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][ref]["properties"]) == {"points"}
    assert "MetricPoint" in schema["components"]["schemas"]


def test_docs_can_be_turned_off(db_backend, tmp_path, settings_factory):
    app, _ = _svc_with(db_backend, tmp_path, settings_factory, api_docs=False)
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404


def test_metrics_scrape_token(db_backend, tmp_path, settings_factory):
    app, _ = _svc_with(db_backend, tmp_path, settings_factory, metrics_token="scrape-secret")
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert r.status_code == 200 and "alto_queue_length" in r.text


def test_paths_in_engine_runs_launched_by_the_service_are_confined(tmp_path, monkeypatch):
    """The engine's own check, with symlinks resolved (the service's is by name only)."""
    from engine.data.roots import check_cache_outside_roots, resolve_in_roots
    from engine.errors import DataError

    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.txt").write_text("hi")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    monkeypatch.setenv("ALTO_DATA_ROOTS", str(root))
    assert resolve_in_roots(str(root / "ok.txt"), "data.files.0") == (root / "ok.txt").resolve()
    for name in (str(root / "escape.txt"), str(root / ".." / "secret.txt"), "rel.txt"):
        with pytest.raises(DataError) as info:
            resolve_in_roots(name, "data.files.0")
        assert info.value.problems[0].field == "data.files.0"
    # the same message whether or not the outside path exists
    msgs = set()
    for name in (str(tmp_path / "secret.txt"), str(tmp_path / "missing.txt")):
        with pytest.raises(DataError) as info:
            resolve_in_roots(name, "f")
        msgs.add(info.value.problems[0].message.replace(name, "NAME"))
    assert len(msgs) == 1
    with pytest.raises(DataError, match="inside the data root"):
        check_cache_outside_roots(root / "cache")
    check_cache_outside_roots(tmp_path / "cache")
    monkeypatch.setenv("ALTO_DATA_ROOTS", "")
    with pytest.raises(DataError, match="allows no data paths"):
        resolve_in_roots(str(root / "ok.txt"), "data.path")
    monkeypatch.delenv("ALTO_DATA_ROOTS")
    assert resolve_in_roots("rel.txt", "data.path") == Path("rel.txt")  # a run by hand


def test_preflight_and_corpus_reading_use_the_roots(tmp_path, monkeypatch):
    from alto_client.spec import JobSpec

    from engine.data.corpus import load_corpus
    from engine.errors import DataError
    from engine.preflight import check_spec_on_machine

    outside = tmp_path / "outside.txt"
    outside.write_text("x" * 100)
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("ALTO_DATA_ROOTS", str(root))
    spec = JobSpec.model_validate(
        {"data": {"source": "files", "files": [str(outside), str(root / "missing.txt")]}}
    )
    problems = {p.field: p.message for p in check_spec_on_machine(spec)}
    assert "not inside the data roots" in problems["data.files.0"]
    assert "does not exist" in problems["data.files.1"]
    with pytest.raises(DataError, match="not inside the data roots"):
        load_corpus(spec.data)
    indexed = JobSpec.model_validate(
        {
            "data": {
                "source": "indexed",
                "path": str(tmp_path / "ds"),
                "tokenizer": {"kind": "byte"},
            },
        }
    )
    problems = {p.field: p.message for p in check_spec_on_machine(indexed)}
    assert "not inside the data roots" in problems["data.path"]
