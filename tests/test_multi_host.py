"""Three hosts on one machine (tests/hosts.py: a PID and UTS namespace each, so each has
its own hostname and pid numbers that collide with the others', as on real machines):
cancels reach every host, operator tools act on their own host only, a dead host's tasks
are settled, and a kill aimed at one host's pid never hits the same pid on another."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from services.ctl import queues
from services.reaper.celery_ops import CeleryOps
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.keys import Keys
from shared.registry import LiveExecution, live_executions
from shared.settings import Settings
from shared.submit import submit
from tests.hosts import SimulatedHost, missing_tools, ns_pid, unavailable
from tests.support import TERMINAL, eventually, require_debian_packages, wait_for

pytestmark = pytest.mark.slow

NAMES = ("hosta", "hostb", "hostc")
LONG = {"chunks": 1000, "chunk_seconds": 0.1}  # cooperative, runs for minutes
STUBBORN = {"seconds": 120}  # never looks at its token
SHORT = {"chunks": 2, "chunk_seconds": 0.01}


def on(host: str) -> str:
    """The queue only that host's worker consumes (besides the shared default queue)."""
    return f"on-{host}"


def host_of(row: Any) -> str:
    return str(row["worker"]).split("@", 1)[1]


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    # tests.actors brings `resilient` (auto_resume=2) for the dead-host test
    return settings.with_(actor_modules="services.worker.actors,tests.actors")


class Cluster:
    """Three simulated hosts, one worker each (concurrency 2), each also on its own queue."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.hosts = {n: SimulatedHost(n, settings, log_dir) for n in NAMES}

    def __getitem__(self, name: str) -> SimulatedHost:
        return self.hosts[name]

    def node(self, name: str) -> str:
        return self.hosts[name].worker.node

    def live_nodes(self) -> set[str]:
        return {h.worker.node for h in self.hosts.values()
                if h.running and h.workers and h.worker.alive()}

    def ensure(self) -> None:
        """Every host up with a ready worker and a full pool; dead ones are started anew."""
        fresh = []
        for name, host in self.hosts.items():
            if host.running and host.workers and host.worker.alive():
                continue
            host.close()
            host.start()
            if fresh:
                # Pool processes of different hosts then start at clearly different times.
                time.sleep(0.3)
            fresh.append(host.start_worker(concurrency=2, queues=on(name), wait=False))
        for w in fresh:
            w.wait_ready()
        for host in self.hosts.values():
            eventually(lambda w=host.worker: len(w.pool()) >= w.concurrency, timeout=20,
                       what=f"{host.name}: pool refilled")

    def close(self) -> None:
        for host in self.hosts.values():
            for w in host.workers:
                w.terminate()
        for host in self.hosts.values():
            host.stop()


@pytest.fixture(scope="module")
def hosts_up(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_debian_packages(missing_tools(), "util-linux")
    why = unavailable()
    if why is not None:
        if os.geteuid() == 0 and os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    cluster = Cluster(settings, tmp_path_factory.mktemp("hosts"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def celery(settings: Settings):
    app = make_celery(settings)
    yield app
    app.close()


@pytest.fixture
def ops(settings: Settings):
    app = make_celery(settings)
    yield CeleryOps(app)
    app.close()


@pytest.fixture
async def cluster(hosts_up: Cluster, settings: Settings, db: Db, redis: aioredis.Redis,
                  canceller: Canceller) -> AsyncIterator[Cluster]:
    """The three hosts, up and idle; afterwards every row ends and every pool is idle again."""
    hosts_up.ensure()  # on this (the main) thread: a host lives as long as the thread that made it
    yield hosts_up
    await canceller.cancel_all(by="test-teardown", reason="teardown", force=True)
    keys = Keys(settings.key_prefix)

    async def idle() -> bool:
        live = await live_executions(redis, keys)
        return not any(e.node in hosts_up.live_nodes() for e in live.values())

    await wait_for(idle, timeout=15, what="every live pool process idle")
    await queues.purge(redis, keys, await queues.known_queues(settings, db, redis))


# -- helpers ------------------------------------------------------------------------------------


async def rows_of(db: Db, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    rows = await db.pool.fetch("SELECT * FROM tasks WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r for r in rows}


async def submit_many(db: Db, celery, placement: list[tuple[str, dict[str, Any], str | None]]
                      ) -> list[uuid.UUID]:
    return [(await submit(db, celery, actor=actor, kwargs=kwargs, queue=queue))["id"]
            for actor, kwargs, queue in placement]


async def all_beating(db: Db, ids: list[uuid.UUID], timeout: float = 30) -> dict[uuid.UUID, Any]:
    """Waits until every task runs and has sent a heartbeat."""
    async def check() -> dict[uuid.UUID, Any] | None:
        rows = await rows_of(db, ids)
        ok = all(r["status"] == "running" and r["heartbeat_at"] for r in rows.values())
        return rows if ok and len(rows) == len(ids) else None

    return await wait_for(check, timeout=timeout, what=f"{len(ids)} tasks running")


async def still_beating(db: Db, ids: list[uuid.UUID], *, wait: float) -> dict[uuid.UUID, Any]:
    """Every one of the tasks still runs, and has beaten again `wait` seconds later: their
    rows by then."""
    before = {i: r["heartbeat_at"] for i, r in (await rows_of(db, ids)).items()}
    await asyncio.sleep(wait)
    after = await rows_of(db, ids)
    assert all(r["status"] == "running" for r in after.values()), \
        {host_of(r): r["status"] for r in after.values()}
    assert all(r["heartbeat_at"] > before[i] for i, r in after.items())
    return after


def alive(proc: psutil.Process) -> bool:
    """Still the same process (psutil compares the start time too) and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_procs_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = list(procs)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        await asyncio.sleep(0.02)
    return left


# -- a: cancels travel to the host that runs the task -------------------------------------------


async def test_tasks_spread_over_three_hosts_and_a_cancel_reaches_its_host(
        cluster: Cluster, db: Db, celery, canceller: Canceller, start_reaper) -> None:
    start_reaper()
    # given six long cooperative tasks on the shared queue, one per pool process
    ids = await submit_many(db, celery, [("distill", LONG, None)] * 6)

    async def on_every_host() -> dict[uuid.UUID, Any] | None:
        rows = await rows_of(db, ids)
        running = [r for r in rows.values() if r["status"] == "running" and r["heartbeat_at"]]
        return rows if {host_of(r) for r in running} == set(NAMES) else None

    rows = await wait_for(on_every_host, timeout=30, what="tasks running on all three hosts")
    # then the rows name three different hosts, each through its worker's node
    running = [r for r in rows.values() if r["status"] == "running"]
    assert {r["worker"] for r in running} == {cluster.node(n) for n in NAMES}
    # when one task that runs on host B is cancelled
    victim = next(r for r in running if host_of(r) == "hostb")
    others = [r["id"] for r in running if r["id"] != victim["id"]]
    t0 = time.monotonic()
    await canceller.cancel(victim["id"], by="test", reason="one on hostb")

    async def cancelled() -> Any:
        r = await db.get_task(victim["id"])
        return r if r["status"] in TERMINAL else None

    final = await wait_for(cancelled, timeout=5, interval=0.01, what="the cancel on hostb")
    took = time.monotonic() - t0
    # then it stopped there cooperatively within a second
    assert final["status"] == "cancelled" and final["outcome"] == "cooperative", dict(final)
    assert took <= 1.0, f"cancel on another host took {took:.3f}s"
    # and only that task: the others, on every host, keep running and beating
    await still_beating(db, others, wait=0.6)


# -- e: the same pid on two hosts -----------------------------------------------------------------


def _same_pid_pairs(entries: list[LiveExecution]) -> list[tuple[LiveExecution, LiveExecution]]:
    pairs = []
    for a in entries:
        for b in entries:
            if a.host < b.host and a.pid == b.pid:
                pairs.append((a, b))
    return pairs


async def test_a_kill_for_a_pid_on_one_host_spares_the_same_pid_on_another(
        cluster: Cluster, settings: Settings, db: Db, redis: aioredis.Redis, celery,
        ops: CeleryOps, start_reaper) -> None:
    start_reaper()
    # given every pool process of every host running an uncooperative task
    ids = await submit_many(db, celery, [("stubborn", STUBBORN, on(n)) for n in NAMES
                                         for _ in range(2)])
    await all_beating(db, ids)
    keys = Keys(settings.key_prefix)

    async def registered() -> dict[str, LiveExecution] | None:
        live = await live_executions(redis, keys)
        return live if {uuid.UUID(t) for t in live} >= set(ids) else None

    live = await wait_for(registered, timeout=10, what="six registered executions")
    entries = [live[str(i)] for i in ids]
    # then the registry holds all six, although the pids collide across hosts
    assert {e.host for e in entries} == set(NAMES)
    pairs = _same_pid_pairs(entries)
    assert pairs, f"no pid shared by two hosts: {[(e.host, e.pid) for e in entries]}"
    usable = [(a, b) for a, b in pairs if abs(a.pid_started - b.pid_started) > 0.05]
    assert usable, "the pool processes sharing a pid started at the same moment"
    a, b = usable[0]
    ha, hb = cluster[a.host], cluster[b.host]
    proc_a, proc_b = ha.outer(a.pid), hb.outer(b.pid)
    assert proc_a.pid != proc_b.pid and ns_pid(proc_a) == ns_pid(proc_b) == a.pid
    # (the recorded start time is the one seen from outside too)
    assert abs(proc_b.create_time() - b.pid_started) < 0.05

    # when a kill is aimed at host A's node with A's message and pid but B's start time
    replies = await ops.kill(node=a.node, message_id=a.message_id, task_id=a.task_id,
                             pid=a.pid, pid_started=b.pid_started)
    # then A's worker refuses it: that pid there is not the process that started then
    assert replies and not any(r.get("killed") for r in replies), replies
    assert "reused" in replies[0].get("why", ""), replies
    # and B's whole execution sent to A's node is refused too: A does not run that message
    replies = await ops.kill(node=a.node, message_id=b.message_id, task_id=b.task_id,
                             pid=b.pid, pid_started=b.pid_started)
    assert replies and not any(r.get("killed") for r in replies), replies
    assert alive(proc_a) and alive(proc_b)

    # when the reaper's kill path targets B's execution, as the registry describes it
    before = {n: h.worker.processes() for n, h in cluster.hosts.items()}
    replies = await ops.kill(node=b.node, message_id=b.message_id, task_id=b.task_id,
                             pid=b.pid, pid_started=b.pid_started)
    # then B's pool process dies, and only it
    assert [r.get("killed") for r in replies] == [True], replies
    assert not await wait_procs_gone([proc_b], 5), "B's pool process survived"
    assert alive(proc_a), "the same pid on host A was killed"
    for name, procs in before.items():
        assert all(alive(p) for p in procs if p.pid != proc_b.pid), name
    # and A's task still runs and beats in that process
    later = (await still_beating(db, [uuid.UUID(a.task_id)], wait=0.5))[uuid.UUID(a.task_id)]
    assert later["pid"] == a.pid and later["worker"] == a.node and alive(proc_a)


# -- c: cancel-all over every host ------------------------------------------------------------------


async def test_cancel_all_ends_every_task_on_every_host_and_keeps_the_workers(
        cluster: Cluster, settings: Settings, db: Db, celery, canceller: Canceller,
        start_reaper) -> None:
    start_reaper()
    # given every pool process busy (one of them with a task that never checks its token)
    # and three tasks queued behind them
    placement = [("distill", LONG, on("hosta"))] * 2 + [("distill", LONG, on("hostb"))] * 2
    placement += [("distill", LONG, on("hostc")), ("stubborn", STUBBORN, on("hostc"))]
    running_ids = await submit_many(db, celery, placement)
    rows = await all_beating(db, running_ids)
    queued_ids = await submit_many(db, celery, [("distill", LONG, None)] * 3)
    await asyncio.sleep(0.3)
    assert {r["status"] for r in (await rows_of(db, queued_ids)).values()} == {"queued"}
    stubborn_row = next(r for r in rows.values() if r["actor"] == "stubborn")
    stubborn_proc = cluster["hostc"].outer(stubborn_row["pid"])
    mains = {n: h.worker.main for n, h in cluster.hosts.items()}
    pools = {n: h.worker.pool() for n, h in cluster.hosts.items()}
    ids = running_ids + queued_ids

    # when everything is cancelled at once
    t0 = time.monotonic()
    await canceller.cancel_all(by="test", reason="everything, everywhere")
    bound = settings.cancel_grace + 2.0

    async def all_terminal() -> dict[uuid.UUID, Any] | None:
        rows = await rows_of(db, ids)
        return rows if all(r["status"] in TERMINAL for r in rows.values()) else None

    final = await wait_for(all_terminal, timeout=bound + 5, what="every row terminal")
    took = time.monotonic() - t0
    # then every row on every host is terminal within the grace period and a margin
    assert took <= bound, f"cancel-all took {took:.2f}s (bound {bound}s)"
    outcomes = {i: (r["status"], r["outcome"]) for i, r in final.items()}
    for i in queued_ids:
        assert outcomes[i] == ("cancelled", "never_started"), outcomes[i]
    for i in running_ids:
        want = "killed" if i == stubborn_row["id"] else "cooperative"
        assert outcomes[i] == ("cancelled", want), (host_of(final[i]), outcomes[i])
    # and every host's worker lives on: the same main process, the same pool processes
    # for the tasks that stopped on their own; only the stubborn one's process was replaced
    for name in NAMES:
        assert alive(mains[name]), f"{name}'s main process died"
        for p in pools[name]:
            if p.pid == stubborn_proc.pid:
                continue
            assert alive(p), f"{name}'s pool process {ns_pid(p)} died"
    assert not await wait_procs_gone([stubborn_proc], 5)

    async def refilled() -> bool:
        return all(len(h.worker.pool()) == 2 for h in cluster.hosts.values())

    await wait_for(refilled, timeout=15, what="hostc's pool refilled")


# -- b: force-kill on one host --------------------------------------------------------------------


async def test_force_kill_on_one_host_kills_only_that_hosts_workers(
        cluster: Cluster, settings: Settings, db: Db, redis: aioredis.Redis, celery,
        start_reaper) -> None:
    start_reaper()
    # given A running an uncooperative and a cooperative task, B and C two cooperative each
    placement = [("stubborn", STUBBORN, on("hosta")), ("distill", LONG, on("hosta"))]
    placement += [("distill", LONG, on("hostb"))] * 2 + [("distill", LONG, on("hostc"))] * 2
    ids = await submit_many(db, celery, placement)
    await all_beating(db, ids)
    a = cluster["hosta"]
    a_procs = a.worker.processes()
    others = {n: cluster[n].worker.processes() for n in ("hostb", "hostc")}
    assert len(a_procs) == 3 and all(len(p) == 3 for p in others.values())
    # and taskctl on A sees A's worker processes as its own and the other workers as remote
    view = await asyncio.to_thread(a.ctl, "status", "--json")
    assert view.returncode == 0, view.stdout + view.stderr
    snap = json.loads(view.stdout)
    assert snap["host"] == "hosta"
    assert {w["node"]: w["state"] for w in snap["workers"]} == {
        cluster.node("hosta"): "alive", cluster.node("hostb"): "remote",
        cluster.node("hostc"): "remote"}
    assert sorted((p["node"], p["pid"]) for p in snap["processes"]) == \
        sorted((cluster.node("hosta"), ns_pid(p)) for p in a_procs)

    # when an operator runs `taskctl force-kill --force` on host A
    done = await asyncio.to_thread(a.ctl, "force-kill", "--force")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "force-kill on host hosta" in out
    assert "Workers on other hosts are not signalled" in out
    # then every worker process of host A is gone (the host itself, its init, stays)
    assert not await wait_procs_gone(a_procs, 5), "a worker process of host A survived"
    assert a.running
    # and B's and C's worker processes are untouched: the same main and pool processes
    for name, procs in others.items():
        assert all(alive(p) for p in procs), f"force-kill on hosta hit {name}"

    # and, as the design has it, every unfinished row of the deployment is cancelled with
    # one audit row; A's were killed, B's and C's stop on their own through the forced event,
    # and their own hosts record that truthfully: cooperative, not killed
    async def all_cancelled() -> dict | None:
        found = await rows_of(db, ids)
        return found if {r["status"] for r in found.values()} == {"cancelled"} else None

    rows = await wait_for(all_cancelled, timeout=5, what="every row cancelled")
    assert [rows[i]["outcome"] for i in ids[2:]] == ["cooperative"] * (len(ids) - 2), \
        [(rows[i]["worker"], rows[i]["outcome"]) for i in ids]
    assert {r["cancel_reason"] for r in rows.values()} == {"force-kill"}
    assert all(r["cancel_forced"] for r in rows.values())
    assert all(r["cancel_by"].endswith("@hosta") for r in rows.values())
    assert [rows[i]["outcome"] for i in ids[:2]] == ["killed", "killed"]
    audit = (await db.list_audit(1))[0]
    assert audit["reason"] == "force-kill" and set(audit["task_ids"]) >= set(ids)
    keys = Keys(settings.key_prefix)

    async def no_live_execution() -> bool:
        live = await live_executions(redis, keys)
        return not (set(live) & {str(i) for i in ids})

    await wait_for(no_live_execution, timeout=5, what="B's and C's executions to stop")
    for name, procs in others.items():
        assert all(alive(p) for p in procs), f"{name}'s processes died after the cancel"
    # and only A's worker record went; B's and C's are still there
    recorded = set(await redis.hkeys(keys.workers))
    assert cluster.node("hosta") not in recorded
    assert {cluster.node("hostb"), cluster.node("hostc")} <= recorded

    # and B and C keep working: new tasks placed on them run to the end there
    fresh = await submit_many(db, celery, [("distill", SHORT, on("hostb")),
                                           ("distill", SHORT, on("hostc"))])

    async def finished() -> dict[uuid.UUID, Any] | None:
        rows = await rows_of(db, fresh)
        return rows if all(r["status"] in TERMINAL for r in rows.values()) else None

    ended = await wait_for(finished, timeout=20, what="new tasks on hostb and hostc")
    assert [(r["status"], host_of(r)) for r in (ended[i] for i in fresh)] == \
        [("succeeded", "hostb"), ("succeeded", "hostc")]


# -- d: a host dies ---------------------------------------------------------------------------------


async def test_a_dead_host_s_tasks_are_settled_and_the_others_keep_running(
        cluster: Cluster, settings: Settings, db: Db, celery, start_reaper) -> None:
    start_reaper()
    # given A and C busy with long tasks on their own queues
    others = await submit_many(db, celery, [("distill", LONG, on(n)) for n in ("hosta", "hostc")
                                            for _ in range(2)])
    await all_beating(db, others)
    # and B running one task that may not resume and one that may (auto_resume=2); only B
    # has a free pool process, so the second lands there from the shared queue
    doomed = await submit_many(db, celery, [("distill", LONG, on("hostb")),
                                            ("resilient", {"chunks": 1000, "chunk_seconds": 0.1},
                                             None)])
    rows = await all_beating(db, doomed)
    assert {host_of(r) for r in rows.values()} == {"hostb"}
    lost_id, resumable_id = doomed

    # when every process of host B is killed with SIGKILL at once
    b = cluster["hostb"]
    killed = b.kill_all()
    killed_at = time.monotonic()
    assert killed and not b.processes()
    bound = settings.heartbeat_timeout + settings.reconcile_interval + 5.0

    # then B's tasks are settled: the plain one is lost, the resumable one goes back to the
    # queue for a new attempt
    async def settled() -> dict[uuid.UUID, Any] | None:
        rows = await rows_of(db, doomed)
        ok = rows[lost_id]["status"] == "lost" and rows[resumable_id]["resumes"] >= 1
        return rows if ok else None

    rows = await wait_for(settled, timeout=bound + 10, what="hostb's tasks settled")
    took = time.monotonic() - killed_at
    assert took <= bound, f"settling a dead host's tasks took {took:.2f}s (bound {bound}s)"
    assert rows[lost_id]["outcome"] == "gone"
    assert rows[resumable_id]["status"] in ("queued", "running")
    assert rows[resumable_id]["attempt"] == 1 or host_of(rows[resumable_id]) != "hostb"
    # and the other hosts' tasks kept running all along, still beating
    await still_beating(db, others, wait=0.5)
    for name in ("hosta", "hostc"):
        assert all(alive(p) for p in cluster[name].worker.processes()), name
