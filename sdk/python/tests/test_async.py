"""The AsyncClient's main paths, on asyncio (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

from baton_client import AsyncClient, BatonConnectionError, Conflict, Event, NotFound, job_spec

from conftest import Server, free_port, unique


def test_submit_wait_list_and_control(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as baton:
            job = await baton.submit("command", command=["echo '::result {\"n\": 1}'"], shell=True)
            done = await baton.wait(job.id, timeout=30)
            assert done.state == "completed" and done.result == {"n": 1}

            # Several waits at once on one client.
            jobs = await asyncio.gather(*(baton.submit("command", command=["true"]) for _ in range(5)))
            ended = await asyncio.gather(*(baton.wait(j.id, timeout=30) for j in jobs))
            assert [j.state for j in ended] == ["completed"] * 5

            label = unique("async-list")
            await baton.submit_many(
                [job_spec("command", command=["true"], delay="1h", labels={"l": label}) for _ in range(25)]
            )
            listed = [j async for j in baton.list(label=f"l:{label}", page_size=10)]
            assert len(listed) == 25 and len({j.id for j in listed}) == 25

            long = await baton.submit("command", command=["echo ::progress 0.1; exec sleep 300"], shell=True)
            async with baton.events(job=long.id) as events:
                async for event in events:
                    if event.type == "job.progress":
                        break
                assert (await baton.pause(long.id)).state == "paused"
                with pytest.raises(Conflict):
                    await baton.pause(long.id)
                assert (await baton.resume(long.id)).state == "running"
                await baton.stop(long.id, force=True)
                assert (await baton.wait(long.id, timeout=30)).state == "cancelled"
                assert (await baton.retry(long.id)).state in ("queued", "running")
                await baton.cancel(long.id)
                assert (await baton.wait(long.id, timeout=30)).state == "cancelled"
                assert (await baton.delete(long.id)).state == "deleted"
                async for event in events:
                    if event.type == "job.deleted":
                        break

            with pytest.raises(NotFound):
                await baton.get("no-such-job")

    asyncio.run(main())


def test_events_workflows_and_schedules(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as baton:
            async with baton.events() as events:
                # Submitted after the stream was entered: not missed.
                job = await baton.submit("command", command=["echo ::progress 50%"], shell=True)
                seen: List[Event] = []
                async for event in events:
                    if event.job_id == job.id:
                        seen.append(event)
                        if event.type == "job.completed":
                            break
            assert [e.type for e in seen] == ["job.submitted", "job.started", "job.progress", "job.completed"]
            assert seen == await baton.job_events(job.id)

            wf = await baton.submit_workflow(
                {
                    "a": job_spec("command", command=["true"]),
                    "b": job_spec("command", command=["true"], depends_on=["a"]),
                }
            )
            assert (await baton.wait(wf.jobs["b"], timeout=30)).state == "completed"
            assert (await baton.get_workflow(wf.id)).state == "completed"

            id = unique("async-schedule")
            await baton.create_schedule(job_spec("command", command=["true"]), {"type": "manual"}, id=id)
            fired = await baton.trigger_schedule(id)
            assert fired.job is not None
            await baton.wait(fired.job.id, timeout=30)
            assert [f.outcome async for f in baton.schedule_history(id)] == ["completed"]
            assert not (await baton.pause_schedule(id)).enabled
            assert [s.id async for s in baton.list_schedules(q=id)] == [id]
            await baton.delete_schedule(id)

    asyncio.run(main())


def test_a_server_that_is_not_there() -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        async with AsyncClient(url) as baton:
            with pytest.raises(BatonConnectionError) as e:
                await baton.get("any")
            assert url in str(e.value)

    asyncio.run(main())


def test_the_async_stream_survives_a_server_restart(own_server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(own_server.url) as baton:
            before = await baton.submit("command", command=["true"])
            await baton.wait(before.id, timeout=30)
            later = unique("async-after-restart")
            seen: List[Event] = []
            async with baton.events(after=0) as events:
                async for event in events:
                    seen.append(event)
                    if event.job_id == before.id and event.type == "job.completed":
                        # Everything so far was read; the server goes away mid-stream.
                        await asyncio.get_running_loop().run_in_executor(None, own_server.kill)
                        await asyncio.get_running_loop().run_in_executor(None, own_server.start)
                        await baton.submit("command", command=["true"], id=later)
                    if event.job_id == later and event.type == "job.completed":
                        break
                assert events.reconnects >= 1
            ids = [e.id for e in seen]
            assert ids == list(range(1, ids[-1] + 1))
            assert [e.type for e in seen].count("server.up") == 2
            assert [e for e in seen if e.job_id == later] == await baton.job_events(later)

    asyncio.run(main())
