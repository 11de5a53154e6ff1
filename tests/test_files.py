"""The file:// backend: URL forms, the files it writes, atomic replacement (a reader or a crash
never sees part of a file), and checked writes under the directory lock."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConnectionError,
    StorageValidationError,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.objectstore import FileStoreBackend

ROOT = Path(__file__).resolve().parents[1]


def model(storage: str) -> Any:
    class Page(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=storage, storage_name=f"Page{uuid4().hex[:8]}")

    return Page


def test_absolute_and_relative_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = model("file://Relative/Store")
    reference = relative(text="here").model_dump()
    name = relative.__toast_settings__.storage_name
    assert (tmp_path / "Relative" / "Store" / name / f"{reference['id']}.json").is_file()

    absolute = model(f"file://{tmp_path / 'abs'}")
    reference = absolute(text="there").model_dump()
    stored = tmp_path / "abs" / absolute.__toast_settings__.storage_name / f"{reference['id']}.json"
    envelope = json.loads(stored.read_text())
    assert envelope["data"] == {"text": "there"}
    assert envelope["schema_version"] == 1
    assert set(envelope) == {"data", "schema_version", "created_at", "updated_at"}


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file://", "names no directory"),
        ("file:///", "names no directory"),
        ("file:///tmp/x?region=eu", "unknown file option(s) ['region']"),
        ("file://user:Secret-pw_1@host/dir", "never holds credentials"),
    ],
)
def test_bad_file_urls_are_refused_at_class_definition(url: str, fragment: str) -> None:
    with pytest.raises(StorageValidationError) as caught:
        model(url)
    assert fragment in str(caught.value)
    assert "Secret-pw_1" not in str(caught.value)


def test_a_directory_that_cannot_be_made_is_a_connection_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    page = model(f"file://{tmp_path / 'a-file' / 'store'}")
    with pytest.raises(StorageConnectionError, match="file store connect failed"):
        page(text="x").model_dump()


async def test_a_reader_never_sees_part_of_a_file(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    writer, reader = FileStoreBackend(url), FileStoreBackend(url)
    await writer.connect()
    await reader.connect()
    try:
        id = uuid4()
        now = datetime.now(UTC)
        compact = (",", ":")
        versions = [
            json.dumps({"v": i, "fill": str(i) * 400_000}, separators=compact).encode() for i in range(4)
        ]
        await writer.save_records([StoredRecord(id, "Big", versions[0], 1, now, now)])
        seen: set[int] = set()
        stop = asyncio.Event()

        async def read() -> None:
            while not stop.is_set():
                [record] = await reader.load_records([(id, "Big")])
                assert record is not None
                assert record.payload in versions  # a whole version, never a mix or a part
                seen.add(json.loads(record.payload)["v"])

        readers = [asyncio.create_task(read()) for _ in range(3)]
        for round in range(40):
            await writer.save_records([StoredRecord(id, "Big", versions[round % 4], 1, now, now)])
        stop.set()
        await asyncio.gather(*readers)
        assert len(seen) > 1
        assert sorted(p.name for p in (tmp_path / "Big").iterdir()) == [f"{id}.json"]  # no temp files left
    finally:
        await writer.disconnect()
        await reader.disconnect()


WRITER = """
import asyncio, sys
from datetime import UTC, datetime
from uuid import uuid4
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.objectstore import FileStoreBackend

async def main():
    backend = FileStoreBackend(sys.argv[1])
    await backend.connect()
    body = b'{"fill":"' + b"x" * 200_000 + b'"}'
    while True:
        now = datetime.now(UTC)
        records = [StoredRecord(uuid4(), "Crash", body, 1, now, now) for _ in range(8)]
        await backend.save_records(records)
        print(" ".join(str(r.id) for r in records), flush=True)

asyncio.run(main())
"""


async def test_a_killed_writer_leaves_every_acknowledged_record_whole(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a thread below
        [sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, env=env, text=True, bufsize=1
    )
    assert process.stdout is not None
    acknowledged: list[UUID] = []
    deadline = time.monotonic() + 30
    while len(acknowledged) < 80 and time.monotonic() < deadline:
        line = await asyncio.to_thread(process.stdout.readline)
        acknowledged += [UUID(text) for text in line.split()]
    process.send_signal(signal.SIGKILL)  # mid-write, most likely: it writes all the time
    process.wait(10)
    process.stdout.close()
    assert len(acknowledged) >= 80

    backend = FileStoreBackend(url)
    await backend.connect()
    try:
        loaded = await backend.load_records([(id, "Crash") for id in acknowledged])
        assert all(record is not None for record in loaded)
        for path in (tmp_path / "Crash").glob("*.json"):
            json.loads(path.read_bytes())  # every file under a record's name is whole
    finally:
        await backend.disconnect()


async def test_checked_writers_exclude_each_other_through_the_directory_lock(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    backends = [FileStoreBackend(url) for _ in range(4)]
    for backend in backends:
        await backend.connect()
    try:
        id = uuid4()
        now = datetime.now(UTC)

        async def attempt(backend: FileStoreBackend, n: int) -> bool:
            record = StoredRecord(
                id, "Locked", json.dumps({"by": n}).encode(), 1, now, datetime.now(UTC), revision=1
            )
            return not await backend.save_records_checked([record])

        won = await asyncio.gather(*(attempt(backend, n) for n, backend in enumerate(backends)))
        assert sum(won) == 1, "exactly one first save may win"
        [stored] = await backends[0].load_records([(id, "Locked")])
        assert stored is not None
        assert stored.revision == 1
        assert json.loads(stored.payload) == {"by": won.index(True)}
    finally:
        for backend in backends:
            await backend.disconnect()
