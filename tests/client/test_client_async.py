"""The async client against a live service: the same calls, awaited."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from alto_client import errors
from alto_client.client import AsyncClient
from alto_client.models import JobStatus
from livesvc import TINY_SPEC, DroppingProxy, LiveService

pytestmark = pytest.mark.timeout(120)


def _spec() -> dict:
    return {**TINY_SPEC, "tags": [*TINY_SPEC["tags"], f"a{uuid.uuid4().hex[:8]}"]}


def test_async_client_end_to_end(svc: LiveService, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(svc.url, svc.admin_token, backoff=0.01) as client:
            spec = _spec()
            tag = spec["tags"][-1]
            jobs = await asyncio.gather(*(client.submit(spec) for _ in range(5)))
            assert len({j.id for j in jobs}) == 5
            listed = [j.id async for j in client.jobs(tag=tag, page_size=2)]
            assert sorted(listed) == sorted(j.id for j in jobs) and len(listed) == 5
            first = jobs[0]
            events = [e async for e in client.stream(first.id)]
            assert events[-1].kind in {"status", "metrics"}
            final = await client.wait(first.id, timeout=60, poll_interval=0.1)
            assert final.status == JobStatus.SUCCEEDED
            history = await client.metrics(first.id, ["train/loss"])
            assert history.series[0].steps == list(range(1, 13))
            assert "training" in await client.logs(first.id)
            with pytest.raises(errors.NotFound):
                await client.job("ffffffffffffffff")
            with pytest.raises(errors.ValidationFailed) as info:
                await client.request("POST", "/v1/jobs", json={"training": {"steps": -1}})
            assert any(e.field == "training.steps" for e in info.value.field_errors)
            comp = await client.compare(spec, ["alto", "adamw"], seeds=1)
            assert [c.id async for c in client.comparisons(limit=1)] == [comp.id]
            page = await client.comparisons_page(limit=1)
            assert page.items[0].id == comp.id and page.items[0].jobs == 2
            done = await client.wait_comparison(comp.id, timeout=60, poll_interval=0.1)
            assert (await client.comparison(comp.id)).arms == done.arms
            assert done.status == JobStatus.SUCCEEDED
            png = await client.plot(comp.id, tmp_path / "c.png")
            assert png.read_bytes().startswith(b"\x89PNG")
            await client.delete_comparison(comp.id)
            with pytest.raises(errors.NotFound):
                await client.comparison(comp.id)
            await client.delete_comparison(comp.id, missing_ok=True)
            await client.delete(first.id)
            with pytest.raises(errors.NotFound):
                await client.delete(first.id)
            assert await client.health()
            long_job = await client.submit(
                {**spec, "training": {**spec["training"], "steps": 5000}}
            )
            await client.cancel(long_job.id)
            assert (await client.wait(long_job.id, timeout=60, poll_interval=0.1)).status == (
                JobStatus.CANCELLED
            )

    asyncio.run(scenario())


def test_async_retry_and_unreachable(svc: LiveService) -> None:
    port = int(svc.url.rsplit(":", 1)[1])

    async def scenario() -> None:
        with DroppingProxy(port, drop_before=1, drop_after=1) as proxy:
            async with AsyncClient(proxy.url, svc.admin_token, backoff=0.01) as client:
                spec = _spec()
                job = await client.submit(spec)
                assert proxy.connections == 3
                assert [j.id async for j in client.jobs(tag=spec["tags"][-1])] == [job.id]
        async with AsyncClient(proxy.url, svc.admin_token, retries=2, backoff=0.01) as dead:
            with pytest.raises(errors.ConnectionFailed):
                await dead.job(job.id)
            assert not await dead.health()

    asyncio.run(scenario())
