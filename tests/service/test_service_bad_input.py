"""No request can crash the service: every bad input gets a 4xx with a clear message."""

from __future__ import annotations

import json

from svc_fakes import tiny_spec

from service.settings import Settings


def assert_4xx(r, status=None, needle=None):
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in r.text
    if needle is not None:
        assert needle in r.text, r.text
    return body


def test_submit_bad_bodies(svc):
    c, h = svc.client, {**svc.alice, "Content-Type": "application/json"}
    assert_4xx(c.post("/v1/jobs", content=b"{not json", headers=h), 400, "not valid JSON")
    assert_4xx(c.post("/v1/jobs", content=b"", headers=h), None)
    assert_4xx(c.post("/v1/jobs", content=b"[1,2]", headers=h), 422)
    assert_4xx(c.post("/v1/jobs", content=b"\xff\xfe", headers=h), None)
    # wrong types, unknown fields: every problem listed with its field
    bad = {"model": {"hidden_size": "big"}, "training": {"steps": -1}, "bogus": 1}
    body = assert_4xx(c.post("/v1/jobs", json=bad, headers=h), 422)
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert ("body", "model", "hidden_size") in locs
    assert ("body", "training", "steps") in locs
    assert ("body", "bogus") in locs
    # cross-field problems from the spec, all at once
    cross = tiny_spec()
    cross["model"]["hidden_size"] = 33
    cross["training"]["micro_batch_size"] = 3
    body = assert_4xx(c.post("/v1/jobs", json=cross, headers=h), 422)
    assert len(body["errors"]) == 2
    # huge numbers
    huge = tiny_spec(steps=10**40)
    assert_4xx(c.post("/v1/jobs", json=huge, headers=h))
    huge = tiny_spec(lr=1e308 * 10)  # inf after JSON parsing
    raw = json.dumps(huge)
    assert_4xx(c.post("/v1/jobs", content=raw.encode(), headers=h), None, "finite")
    nan = json.dumps(tiny_spec()).replace('"steps": 12', '"steps": NaN')
    assert_4xx(c.post("/v1/jobs", content=nan.encode(), headers=h))
    workers = tiny_spec()
    workers["resources"]["workers"] = 2**70
    assert_4xx(c.post("/v1/jobs", json=workers, headers=h))
    # text that storage cannot hold
    for tags in (["a\x00b"], ["x" * 101], [str(i) for i in range(40)], [""]):
        spec = tiny_spec()
        spec["tags"] = tags
        assert_4xx(c.post("/v1/jobs", json=spec, headers=h), 422)
    spec = tiny_spec()
    spec["name"] = "bad\x00name"
    assert_4xx(c.post("/v1/jobs", json=spec, headers=h), 422)
    # a caller cannot smuggle its own report section in: it is dropped
    spec = tiny_spec()
    spec["report"] = {"url": "http://evil.invalid", "job_id": "x", "token": "t"}
    r = c.post("/v1/jobs", json=spec, headers=h)
    assert r.status_code == 202 and r.json()["spec"]["report"] is None


def test_bad_idempotency_keys(svc):
    h = {**svc.alice, "Idempotency-Key": "k" * 201}
    assert_4xx(svc.client.post("/v1/jobs", json=tiny_spec(), headers=h), 400, "Idempotency-Key")


def test_oversized_bodies_get_413(db_backend, tmp_path, settings_factory, admin_token):
    from fastapi.testclient import TestClient
    from svc_fakes import FakeCluster

    from service.app import create_app

    # spec bodies are capped at 4 * max_spec_bytes, metric uploads at max_body_bytes
    settings = settings_factory(db_backend, tmp_path, max_spec_bytes=1024, max_body_bytes=8192)
    assert isinstance(settings, Settings)
    app = create_app(settings, backend=FakeCluster(), start_scheduler=False)
    h = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    with TestClient(app) as c:
        big = json.dumps({**tiny_spec(), "tags": ["x" * 90] * 60})
        r = c.post("/v1/jobs", content=big.encode(), headers=h)
        assert_4xx(r, 413, "limit")

        def chunks():
            for _ in range(10):
                yield b" " * 1000

        r = c.post("/v1/jobs", content=chunks(), headers=h)  # no Content-Length
        assert_4xx(r, 413)


def test_unknown_ids_and_bad_path_params(svc):
    c, h = svc.client, svc.alice
    for path in ("/v1/jobs/0123456789abcdef", "/v1/comparisons/0123456789abcdef"):
        assert_4xx(c.get(path, headers=h), 404, "no ")
    for method, path in [
        ("POST", "/v1/jobs/nope/cancel"),
        ("GET", "/v1/jobs/nope/logs"),
        ("GET", "/v1/jobs/nope/metrics"),
        ("GET", "/v1/jobs/nope/events"),
        ("GET", "/v1/comparisons/nope/plot.png"),
    ]:
        assert_4xx(c.request(method, path, headers=h), 404)
    # ids that are not ids at all
    for bad in ("x" * 41, "a%00b", "a b", "%F0%9F%92%A5"):
        assert_4xx(c.get(f"/v1/jobs/{bad}", headers=h), 422)
        assert_4xx(c.get(f"/v1/comparisons/{bad}", headers=h), 422)
        assert_4xx(c.delete(f"/v1/jobs/{bad}", headers=h), 422)
        assert_4xx(c.delete(f"/v1/comparisons/{bad}", headers=h), 422)
    assert_4xx(c.delete("/v1/jobs/0123456789abcdef", headers=h), 404)
    assert_4xx(c.delete("/v1/comparisons/0123456789abcdef", headers=h), 404)
    assert_4xx(c.delete("/v1/jobs/0123456789abcdef"), 401)
    point = {"points": [{"step": 1, "name": "x", "value": 1.0, "time": 1.0}]}
    r = c.post("/v1/jobs/nope/metrics", json=point, headers={"Authorization": "Bearer t"})
    assert_4xx(r, 401)  # an unknown job and a wrong token look the same
    assert_4xx(c.get("/v1/no-such-route", headers=h), 404)
    assert_4xx(c.delete("/v1/jobs", headers=h), 405)


def test_bad_query_parameters(svc):
    c, h = svc.client, svc.alice
    job = c.post("/v1/jobs", json=tiny_spec(), headers=h).json()
    for q in (
        "status=DONE",
        "limit=0",
        "limit=100000",
        "limit=abc",
        "cursor=-1",
        "cursor=abc",
        "cursor=99999999999999999999999",
        "tag=" + "x" * 200,
        "owner=%00",
    ):
        assert_4xx(c.get(f"/v1/jobs?{q}", headers=h), 422)
    for q in ("limit=0", "limit=501", "cursor=abc", "cursor=-1", "owner=%00", "owner=" + "x" * 201):
        assert_4xx(c.get(f"/v1/comparisons?{q}", headers=h), 422)
    m = f"/v1/jobs/{job['id']}/metrics"
    for q in (
        "max_points=1",
        "max_points=10000000",
        "since_step=-5",
        "since_step=1e3",
        "since_step=99999999999999999999999",
        "names=bad%20name",
        "names=" + "a," * 3000,
    ):
        assert_4xx(c.get(f"{m}?{q}", headers=h), 422)
    assert_4xx(c.get(f"/v1/jobs/{job['id']}/logs?tail_bytes=0", headers=h), 422)
    r = c.get(f"/v1/jobs/{job['id']}/events", headers={**h, "Last-Event-ID": "abc"})
    assert_4xx(r, 400, "Last-Event-ID")


def test_bad_metric_uploads(svc):
    job = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    svc.tick()
    h = {
        "Authorization": f"Bearer {svc.ingest_token(job['id'])}",
        "Content-Type": "application/json",
    }
    url = f"/v1/jobs/{job['id']}/metrics"
    c = svc.client

    def post(points):
        return c.post(url, json={"points": points}, headers=h)

    ok = {"step": 1, "name": "train/loss", "value": 1.0, "time": 1.0}
    assert_4xx(c.post(url, content=b"nope", headers=h), 400)
    assert_4xx(c.post(url, json={"pts": []}, headers=h), 422)
    assert_4xx(post([{**ok, "step": -1}]), 422)
    assert_4xx(post([{**ok, "step": 2**63}]), 422)
    assert_4xx(post([{**ok, "step": 10**30}]), 422)
    assert_4xx(post([{**ok, "step": "1"}]), 422)
    assert_4xx(post([{**ok, "value": "high"}]), 422)
    assert_4xx(post([{**ok, "name": "has space"}]), 422)
    assert_4xx(post([{**ok, "name": "nul\x00"}]), 422)
    assert_4xx(post([{**ok, "name": ""}]), 422)
    inf_time = json.dumps({"points": [ok]}).replace('"time": 1.0', '"time": Infinity')
    assert_4xx(c.post(url, content=inf_time.encode(), headers=h), 422, "finite")
    assert_4xx(post([{**ok, "extra": 1}]), 422)
    assert post([]).json() == {"accepted": 0, "duplicates": 0}
    # nothing bad was stored
    hist = c.get(url, headers=svc.alice).json()
    assert hist["series"] == []


def test_bad_comparison_requests(svc):
    c, h = svc.client, svc.alice
    arms = [
        {"name": "alto", "optimizer": {"name": "alto"}},
        {"name": "adamw", "optimizer": {"name": "adamw"}},
    ]
    good = {"spec": tiny_spec(), "arms": arms, "seeds": [0], "baseline": "adamw"}
    cases = [
        {**good, "arms": arms[:1]},
        {**good, "arms": [arms[0], arms[0]], "baseline": "alto"},
        {**good, "seeds": []},
        {**good, "seeds": [1, 1]},
        {**good, "seeds": [2**40]},
        {**good, "seeds": list(range(50))},
        {**good, "baseline": "sgd"},
        {**good, "arms": [*arms[:1], {"name": "bad name!", "optimizer": {"name": "adamw"}}]},
        {**good, "arms": [arms[0], {"name": "x", "optimizer": {"name": "lion"}}]},
        {**good, "spec": {"training": {"steps": "many"}}},
        {k: v for k, v in good.items() if k != "spec"},
    ]
    for body in cases:
        assert_4xx(c.post("/v1/comparisons", json=body, headers=h), 422)
    assert c.get("/v1/jobs", headers=h).json()["items"] == []
