"""Authentication and ownership: tokens hashed, 401 without one, others' jobs are 404."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from svc_fakes import tiny_spec

from service.auth import create_token, hash_token, lookup_token
from service.db.tables import ApiToken
from service.settings import Settings

PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"),
    ("POST", "/v1/jobs/abc/cancel"),
    ("GET", "/v1/jobs/abc/logs"),
    ("GET", "/v1/jobs/abc/metrics"),
    ("GET", "/v1/jobs/abc/events"),
    ("POST", "/v1/comparisons"),
    ("GET", "/v1/comparisons/abc"),
    ("GET", "/v1/comparisons/abc/plot.png"),
]


def test_requests_without_a_valid_token_get_401(svc):
    for method, path in PROTECTED:
        for header in (None, "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "bearer  "):
            headers = {"Authorization": header} if header is not None else {}
            r = svc.client.request(method, path, headers=headers, json=tiny_spec())
            assert r.status_code == 401, (method, path, header, r.status_code, r.text)
            assert r.json()["message"]
            assert r.headers["www-authenticate"] == "Bearer"


def test_tokens_are_stored_hashed(svc):
    factory = svc.app.state.svc.factory
    with factory() as s:
        stored = s.scalars(select(ApiToken.token_hash)).all()
    raw = svc.alice["Authorization"].split()[1]
    assert raw not in stored and hash_token(raw) in stored
    assert all(len(h) == 64 for h in stored)


def test_users_see_and_cancel_only_their_own_jobs(svc):
    job = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/logs"),
        ("GET", f"/v1/jobs/{job['id']}/metrics"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
    ]:
        r = svc.client.request(method, path, headers=svc.bob)
        assert r.status_code == 404, (method, path, r.status_code)
    assert svc.client.get("/v1/jobs", headers=svc.bob).json()["items"] == []
    assert svc.client.get("/v1/jobs?owner=alice", headers=svc.bob).json()["items"] == []
    # the job is untouched by bob's cancel attempt
    assert svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()["status"] == "PENDING"
    # the admin sees and cancels it
    assert svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.admin).status_code == 200
    r = svc.client.post(f"/v1/jobs/{job['id']}/cancel", headers=svc.admin)
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED"


def test_comparisons_are_private_too(svc):
    body = {
        "spec": tiny_spec(),
        "arms": [
            {"name": "alto", "optimizer": {"name": "alto"}},
            {"name": "adamw", "optimizer": {"name": "adamw"}},
        ],
        "seeds": [0],
        "baseline": "adamw",
    }
    comp = svc.client.post("/v1/comparisons", json=body, headers=svc.alice).json()
    assert svc.client.get(f"/v1/comparisons/{comp['id']}", headers=svc.bob).status_code == 404
    r = svc.client.get(f"/v1/comparisons/{comp['id']}/plot.png", headers=svc.bob)
    assert r.status_code == 404
    assert svc.client.get(f"/v1/comparisons/{comp['id']}", headers=svc.admin).status_code == 200


def test_ingestion_needs_the_jobs_own_token(svc):
    a = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    b = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    point = {"points": [{"step": 1, "name": "train/loss", "value": 1.0, "time": 1.0}]}
    # before launch no token exists at all
    r = svc.client.post(f"/v1/jobs/{a['id']}/metrics", json=point, headers=svc.alice)
    assert r.status_code == 401
    for bad in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic eDp5"}):
        r = svc.client.post(f"/v1/jobs/{a['id']}/metrics", json={"junk": 1}, headers=bad)
        assert r.status_code == 401, r.text
    svc.tick()
    for headers in (svc.alice, svc.admin, {"Authorization": f"Bearer {svc.ingest_token(b['id'])}"}):
        r = svc.client.post(f"/v1/jobs/{a['id']}/metrics", json=point, headers=headers)
        assert r.status_code == 401
    ok = {"Authorization": f"Bearer {svc.ingest_token(a['id'])}"}
    assert svc.client.post(f"/v1/jobs/{a['id']}/metrics", json=point, headers=ok).status_code == 200


def test_create_token_function_and_admin_env(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path / "d")
    token = create_token(settings, "carol")
    admin = create_token(settings, "root", admin=True)
    assert token.startswith("alto_") and token != admin
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(settings.resolved_database_url())
    factory = make_session_factory(engine)
    p = lookup_token(factory, token)
    assert p is not None and p.owner == "carol" and not p.admin
    assert lookup_token(factory, admin).admin
    assert lookup_token(factory, "alto_nope") is None
    engine.dispose()
    with pytest.raises(ValueError, match="owner"):
        create_token(settings, " padded ")
    # ALTO_ADMIN_TOKEN comes in through pydantic-settings
    monkeypatch.setenv("ALTO_ADMIN_TOKEN", "fixed-admin")
    monkeypatch.setenv("ALTO_DATA_DIR", str(tmp_path / "e"))
    s = Settings()
    assert s.admin_token == "fixed-admin" and s.data_dir == tmp_path / "e"
