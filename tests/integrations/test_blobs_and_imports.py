"""The shared blob store and the adapters' import guards."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from pydantic_toast import RecordIntegrityError, stats
from pydantic_toast.integrations._blobs import BlobStore, content_id

ADAPTERS = {
    "celery": "celery",
    "temporal": "temporalio",
    "langgraph": "langgraph",
    "faststream": "faststream",
}


def test_threads_putting_the_same_bytes_write_them_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'blobs.db'}"
    store = BlobStore(url)
    data = b"x" * 100_000
    ids: list[object] = []
    start = threading.Barrier(8)

    def put() -> None:
        start.wait()
        ids.append(store.put(data))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(ids) == {content_id(data)[0]}
    assert stats()[url]["records_written"] == 1
    assert store.get(content_id(data)[0]) == data


async def test_async_batch_puts_each_distinct_blob_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'blobs.db'}"
    store = BlobStore(url)
    ids = await store.aput_many([b"a" * 10, b"b" * 10, b"a" * 10])
    assert ids[0] == ids[2] != ids[1]
    assert stats()[url]["records_written"] == 2
    assert await store.aget_many(ids) == [b"a" * 10, b"b" * 10, b"a" * 10]
    await store.aput_many([b"b" * 10])
    assert stats()[url]["records_written"] == 2


def test_a_blob_edited_in_the_store_is_refused(tmp_path: Path) -> None:
    store = BlobStore(f"sqlite:///{tmp_path / 'blobs.db'}")
    record_id = store.put(b"original bytes")
    with closing(sqlite3.connect(tmp_path / "blobs.db")) as connection, connection:
        [data] = connection.execute(
            "SELECT data FROM external_models WHERE id = ?", (str(record_id),)
        ).fetchone()
        envelope = json.loads(data)
        envelope["data"] = "dGFtcGVyZWQ="  # base64 of b"tampered"
        connection.execute(
            "UPDATE external_models SET data = ? WHERE id = ?", (json.dumps(envelope), str(record_id))
        )
    with pytest.raises(RecordIntegrityError) as caught:
        BlobStore(f"sqlite:///{tmp_path / 'blobs.db'}").get(record_id)
    assert "tampered" not in str(caught.value)


@pytest.mark.parametrize("extra", sorted(ADAPTERS))
def test_a_missing_framework_names_its_extra(extra: str) -> None:
    # A fresh interpreter where importing the framework fails, as on a machine without it.
    code = (
        "import sys\n"
        f"sys.modules[{ADAPTERS[extra]!r}] = None\n"
        "from pydantic_toast import MissingDependencyError\n"
        "try:\n"
        f"    import pydantic_toast.integrations.{extra}\n"
        "except MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without its framework')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"pip install 'pydantic-toast[{extra}]'" in result.stdout


def test_the_core_imports_no_framework() -> None:
    code = (
        "import sys, pydantic_toast, pydantic_toast.integrations\n"
        f"print(sorted(m for m in {sorted(ADAPTERS.values())!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_compressed_blobs_round_trip_and_take_less_room(tmp_path: Path) -> None:
    data = b"lorem ipsum dolor sit amet " * 4000
    plain, packed = (
        BlobStore(f"sqlite:///{tmp_path / 'plain.db'}"),
        BlobStore(f"sqlite:///{tmp_path / 'packed.db'}", compression="zlib"),
    )
    for store in (plain, packed):
        assert store.get(store.put(data)) == data

    # SQLite in WAL mode: the records may still be in the -wal file.
    def size(name: str) -> int:
        return sum(path.stat().st_size for path in tmp_path.glob(f"{name}.db*"))

    assert size("packed") < size("plain") / 2
