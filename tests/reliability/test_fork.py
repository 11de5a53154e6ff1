"""fork(): a child never inherits a held library lock, never disturbs its parent's connections,
and can write to a SQLite file its parent was writing to at the moment of the fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]


def _run(script: str, *args: str, timeout: float = 240) -> str:
    # 3.12+ warns about forking a multi-threaded process; forking one is the point here.
    result = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A loaded machine can make an operation take over a second; the library's WARNING saying
    # so is about speed, which the tests here bound themselves, not a sign of a broken fork.
    unexpected = [line for line in result.stderr.splitlines() if "slow storage operation" not in line]
    assert unexpected == [], result.stderr
    return result.stdout


# Forks children one after another while threads keep every library lock busy: the memory
# store's and the traffic counters' (sync calls), the runtime's and the registry's (a new event
# loop per call), the storage-name claims and schema builds (new classes), the registry's again.
# Prints "<children> <hung> <failed>".
FORK_WHILE_BUSY = """
    import asyncio, os, sys, threading, time
    from uuid import uuid4
    import pydantic_toast
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict, register_backend
    from pydantic_toast.backends.memory import MemoryBackend

    children = int(sys.argv[1])

    class M(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="memory://fork-locks")

    stop = threading.Event()

    def sync_traffic():
        while not stop.is_set():
            M.model_validate(M(x=1).model_dump())

    def loop_traffic():
        async def work():
            await M.load(await M(x=2).save())
        while not stop.is_set():
            asyncio.run(work())

    def class_traffic():
        while not stop.is_set():
            class C(ExternalBaseModel):
                y: int
                model_config = ExternalConfigDict(
                    storage="memory://fork-locks", storage_name=f"C{uuid4().hex}"
                )
            C(y=1).model_dump()

    def registry_traffic():
        while not stop.is_set():
            register_backend("memory", MemoryBackend, replace=True)
            pydantic_toast.stats()

    workers = [
        threading.Thread(target=target, daemon=True)
        for target in (sync_traffic, loop_traffic, class_traffic, registry_traffic)
    ]
    for worker in workers:
        worker.start()
    time.sleep(0.2)

    async def child_work():
        return await M.load(await M(x=3).save())

    hung = failed = 0
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(child_work())
                M.model_validate(M(x=4).model_dump())
            except BaseException:
                os._exit(3)
            os._exit(0)
        deadline = time.monotonic() + 5
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                failed += status != 0
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                hung += 1
                break
            time.sleep(0.001)
    stop.set()
    # Joined before exit: a daemon thread still inside a socket call when the interpreter
    # finalizes can abort CPython 3.11 (pthread_exit unwinding), which is not what is tested here.
    for worker in workers:
        worker.join(30)
    print(children, hung, failed)
"""


def test_forked_children_never_inherit_a_held_library_lock() -> None:
    children, hung, failed = map(int, _run(FORK_WHILE_BUSY, "120").split())
    print(f"\n{children} children forked under lock traffic: {hung} hung, {failed} failed")
    assert (hung, failed) == (0, 0)


# The parent holds live connections on the sync bridge and on an event loop of its own; a child
# forks, collects garbage, does its own work and exits (normally or with os._exit); then the
# parent's next 40 concurrent operations on each must all be fast. Prints the slowest of each.
PARENT_AFTER_CHILD = """
    import asyncio, gc, os, sys, threading, time
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict

    url, child_exit = sys.argv[1], sys.argv[2]

    class M(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=url, timeout=20)

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    reference = M(x=1).model_dump()

    async def warm_up():
        await asyncio.gather(*(M(x=i).save() for i in range(10)))
        await M.load(reference)

    on_loop(warm_up())

    pid = os.fork()
    if pid == 0:
        gc.collect()
        async def child_work():
            await M(x=2).save()
            await M.load(reference)
        asyncio.run(child_work())
        M.model_validate(M(x=3).model_dump())
        gc.collect()
        if child_exit == "os._exit":
            os._exit(0)
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status

    async def timed():
        started = time.perf_counter()
        await M.load(reference)
        await M(x=4).save()
        return time.perf_counter() - started

    async def forty():
        return await asyncio.gather(*(timed() for _ in range(40)))

    async_times = on_loop(forty())
    sync_times = []

    def sync_one():
        started = time.perf_counter()
        M.model_validate(M(x=5).model_dump())
        sync_times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=sync_one) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asyncio.run_coroutine_threadsafe(__import__("pydantic_toast").aclose(), loop).result(30)
    print(max(async_times), max(sync_times))
"""


@pytest.mark.parametrize("child_exit", ["os._exit", "normal exit"])
@pytest.mark.parametrize(
    "store",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        "sqlite",
    ],
)
def test_a_child_never_disturbs_its_parents_connections(
    store: str, child_exit: str, request: pytest.FixtureRequest
) -> None:
    if store == "redis":
        url: str = request.getfixturevalue("redis_url")
        url += ("&" if "?" in url else "?") + "prefix=t_fork"
    else:
        url = request.getfixturevalue(f"{store}_table_url" if store == "postgresql" else "sqlite_url")
    slowest_async, slowest_sync = map(float, _run(PARENT_AFTER_CHILD, url, child_exit).split())
    print(f"\n{store}, child {child_exit}: slowest parent op {slowest_async:.3f} s / {slowest_sync:.3f} s")
    # Before the fix, Redis calls stalled for socket_timeout (5 s) here.
    assert slowest_async < 2.0
    assert slowest_sync < 2.0


# Threads keep writing one SQLite file (single saves on the sync bridge, batches on a loop of
# their own) while the process forks children that must each save and load. Prints
# "<children> <failed>".
SQLITE_FORK_WHILE_WRITING = """
    import asyncio, os, sys, threading, time
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict

    path, children = sys.argv[1], int(sys.argv[2])

    # Three writers in the parent and the child contend for SQLite's one write lock: on a loaded
    # machine a write waits over a second for it (the slow-operation warnings say so), which is
    # the likely reason a child failed once with a 2 s busy_timeout. A lock a fork left held still fails
    # every child: 40 of them waiting 10 s each overrun the test's limit.
    class M(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=f"sqlite:///{path}?busy_timeout=10", timeout=20)

    stop = threading.Event()

    def writer():
        while not stop.is_set():
            M(x=1).model_dump()

    async def batches():
        while not stop.is_set():
            await M.save_many([M(x=i) for i in range(20)])

    threads = [threading.Thread(target=writer) for _ in range(2)]
    threads.append(threading.Thread(target=lambda: asyncio.run(batches())))
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    failed = 0
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                M.model_validate(M(x=2).model_dump())
            except BaseException:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        failed += status != 0
    stop.set()
    for thread in threads:
        thread.join()
    print(children, failed)
"""


def test_forked_children_can_write_to_sqlite_while_the_parent_writes(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "fork.db")
    children, failed = map(int, _run(SQLITE_FORK_WHILE_WRITING, path, "40").split())
    print(f"\n{children} children forked while the parent wrote to SQLite: {failed} could not write")
    assert failed == 0


# Threading primitives the library makes outside `forksafe` (which makes the fork-safe ones and
# re-creates its own in the child), by module and kind, with the reason a forked child never waits
# on one inherited held. Any other is a lock a fork can leave held for good: make it with
# `forksafe.Lock()` / `forksafe.RLock()`, or add it here with its reason.
NOT_FROM_FORKSAFE = {
    ("_bridge.py", "Event"): 1,  # the bridge's start signal, awaited under the bridge's own lock
    # One sync call's completion signal, waited on only by the thread that made the call: in a
    # child that thread does not exist, and the child's bridge starts anew (forksafe drops it).
    ("_bridge.py", "Lock"): 1,
    ("integrations/_blobs.py", "Event"): 1,  # a child drops them (_forget_writers_lost_to_fork)
}
PRIMITIVES = {"Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier"}
PRIMITIVES |= {"allocate_lock", "LockType"}  # _thread's


def test_every_threading_lock_of_the_library_is_fork_safe() -> None:
    import ast
    import collections
    from pathlib import Path

    import pydantic_toast

    package = Path(pydantic_toast.__file__).parent
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    for path in sorted(package.rglob("*.py")):
        if path.name == "forksafe.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
        modules = {  # the names `threading` and `_thread` go by in this module
            alias.asname or alias.name: alias.name
            for node in imports
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name in ("threading", "_thread")
        }
        imported = {
            alias.asname or alias.name: alias.name
            for node in imports
            if isinstance(node, ast.ImportFrom) and node.module in ("threading", "_thread")
            for alias in node.names
            if alias.name in PRIMITIVES
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
                if modules.get(function.value.id) and function.attr in PRIMITIVES:
                    found[(path.relative_to(package).as_posix(), function.attr)] += 1
            elif isinstance(function, ast.Name) and function.id in imported:
                found[(path.relative_to(package).as_posix(), imported[function.id])] += 1
    assert dict(found) == NOT_FROM_FORKSAFE


# A parent thread is writing a blob when the process forks; the child puts the same bytes. The
# writer does not exist in the child: waiting for it stalled the child for a minute.
BLOB_WRITER_LOST_TO_FORK = """
    import asyncio, base64, os, threading, time
    from typing import Any
    from uuid import UUID
    from pydantic_toast import StorageBackend, register_backend
    from pydantic_toast.integrations._blobs import BlobStore

    parent = os.getpid()
    release = threading.Event()

    class Gated(StorageBackend):
        records: dict[Any, Any] = {}
        def __init__(self, url: str) -> None: ...
        async def connect(self) -> None: ...
        async def disconnect(self) -> None: ...
        async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
            # The parent's write of the contested bytes (base64 in the envelope) waits for the child.
            if os.getpid() == parent and base64.b64encode(b"same bytes").decode() in repr(data):
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
            self.records[(id, class_name)] = data
        async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
            return self.records.get((id, class_name))

    register_backend("gated", Gated)
    blobs = BlobStore("gated://x")
    # One put first, so that the fork below never lands while the writer thread serializes a
    # class for the first time: on Python 3.13 such a fork left the child stuck inside
    # pydantic-core's to_json (2 of 4 runs; none of 18 with this warm-up), which is not the
    # library's to fix and not what this test is about.
    blobs.put(b"warm-up")
    writer = threading.Thread(target=blobs.put, args=(b"same bytes",))
    writer.start()
    while not blobs._writing:
        time.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        blobs.put(b"same bytes")
        assert blobs.get(blobs.put(b"same bytes")) == b"same bytes"
        os._exit(0)
    deadline = time.monotonic() + 5
    while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    if not done[0]:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    release.set()
    writer.join()
    print("hung" if not done[0] else f"exit {done[1]}")
"""


def test_a_forked_child_does_not_wait_for_a_blob_writer_it_did_not_inherit() -> None:
    assert _run(BLOB_WRITER_LOST_TO_FORK, timeout=60).strip() == "exit 0"
