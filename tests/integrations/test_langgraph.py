"""LangGraph: a real graph over several steps with the real SQLite, in-memory and PostgreSQL savers."""

from __future__ import annotations

import operator
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

from pydantic_toast import stats

pytest.importorskip("langgraph.checkpoint.sqlite")

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from pydantic_toast.integrations.langgraph import ToastSerializer

DOCUMENT = "lorem ipsum dolor sit amet " * 8000  # ~216 KB, carried unchanged through every step


class State(TypedDict):
    document: str
    notes: Annotated[list[str], operator.add]


def build(steps: int, checkpointer: Any) -> CompiledStateGraph[Any]:
    def note(state: State) -> dict[str, list[str]]:
        return {"notes": [f"step {len(state['notes'])}"]}

    graph = StateGraph(State)
    names = [f"n{i}" for i in range(steps)]
    for name in names:
        graph.add_node(name, note)
    for first, second in zip([START, *names], [*names, END], strict=True):
        graph.add_edge(first, second)
    return graph.compile(checkpointer=checkpointer)


def config(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def written(url: str) -> int:
    return stats().get(url, {}).get("records_written", 0)


def table_bytes(connection: sqlite3.Connection) -> int:
    checkpoints = connection.execute(
        "SELECT coalesce(sum(length(checkpoint)), 0) FROM checkpoints"
    ).fetchone()
    writes = connection.execute("SELECT coalesce(sum(length(value)), 0) FROM writes").fetchone()
    return int(checkpoints[0]) + int(writes[0])


@pytest.fixture
def blob_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'blobs.db'}"


def test_sqlite_saver_stores_a_repeated_value_once_and_restores_it(tmp_path: Path, blob_url: str) -> None:
    sizes = {}
    for label, serde in (("plain", None), ("toast", ToastSerializer(blob_url))):
        with (
            closing(sqlite3.connect(tmp_path / f"{label}.db", check_same_thread=False)) as connection,
            connection,
        ):
            saver = SqliteSaver(connection) if serde is None else SqliteSaver(connection, serde=serde)
            graph = build(8, saver)
            out = graph.invoke({"document": DOCUMENT, "notes": []}, config("t1"))
            assert out["document"] == DOCUMENT
            assert len(out["notes"]) == 8
            assert graph.get_state(config("t1")).values["document"] == DOCUMENT
            sizes[label] = table_bytes(connection)
    # Ten checkpoints hold the document: without the serializer each stores a copy.
    assert sizes["plain"] > 8 * len(DOCUMENT)
    assert sizes["toast"] < len(DOCUMENT) // 10
    # Stored once per distinct value: the document, and the graph's input (a dict holding it).
    assert written(blob_url) == 2
    with closing(sqlite3.connect(tmp_path / "blobs.db")) as blobs, blobs:
        assert blobs.execute("SELECT count(*) FROM external_models").fetchone() == (2,)
    print(f"langgraph SQLite: {sizes['plain']} B plain, {sizes['toast']} B with the serializer")


def test_a_second_thread_with_the_same_value_writes_nothing_new(tmp_path: Path, blob_url: str) -> None:
    serde = ToastSerializer(blob_url)
    with (
        closing(sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)) as connection,
        connection,
    ):
        graph = build(3, SqliteSaver(connection, serde=serde))
        graph.invoke({"document": DOCUMENT, "notes": []}, config("a"))
        after_first = written(blob_url)
        graph.invoke({"document": DOCUMENT, "notes": []}, config("b"))
        assert written(blob_url) == after_first


def test_another_process_reads_the_checkpoints(tmp_path: Path, blob_url: str) -> None:
    with (
        closing(sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)) as connection,
        connection,
    ):
        build(2, SqliteSaver(connection, serde=ToastSerializer(blob_url))).invoke(
            {"document": DOCUMENT, "notes": []}, config("t")
        )
        # A fresh serializer (nothing remembered), as a process resuming the thread would have.
        resumed = build(2, SqliteSaver(connection, serde=ToastSerializer(blob_url)))
        assert resumed.get_state(config("t")).values["document"] == DOCUMENT


def test_checkpoints_written_without_the_serializer_still_load(tmp_path: Path, blob_url: str) -> None:
    with (
        closing(sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)) as connection,
        connection,
    ):
        build(2, SqliteSaver(connection)).invoke({"document": "small", "notes": []}, config("old"))
        graph = build(2, SqliteSaver(connection, serde=ToastSerializer(blob_url)))
        assert graph.get_state(config("old")).values == {"document": "small", "notes": ["step 0", "step 1"]}


def test_small_values_stay_inline(blob_url: str) -> None:
    graph = build(3, InMemorySaver(serde=ToastSerializer(blob_url)))
    graph.invoke({"document": "short", "notes": []}, config("s"))
    assert written(blob_url) == 0


def test_in_memory_saver_round_trip(blob_url: str) -> None:
    graph = build(4, InMemorySaver(serde=ToastSerializer(blob_url)))
    graph.invoke({"document": DOCUMENT, "notes": []}, config("m"))
    assert graph.get_state(config("m")).values["document"] == DOCUMENT
    assert written(blob_url) == 2


async def test_async_sqlite_saver(tmp_path: Path, blob_url: str) -> None:
    # The serializer is sync (LangGraph's protocol): its I/O runs on the library's bridge thread.
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "checkpoints.db")) as saver:
        saver.serde = ToastSerializer(blob_url)
        graph = build(3, saver)
        out = await graph.ainvoke({"document": DOCUMENT, "notes": []}, config("async"))
        assert out["document"] == DOCUMENT
        assert (await graph.aget_state(config("async"))).values["document"] == DOCUMENT
    assert written(blob_url) == 2


@pytest.fixture
def postgres_saver_dsn(postgresql_url: str) -> Iterator[str]:
    """A schema of the test's own in the test server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    from fixtures.postgresql import driver_dsn

    dsn = driver_dsn(postgresql_url)
    schema = f"lg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.postgresql
def test_postgres_saver(postgres_saver_dsn: str, blob_url: str) -> None:
    from langgraph.checkpoint.postgres import PostgresSaver

    sizes = {}
    for label, serde in (("plain", None), ("toast", ToastSerializer(blob_url))):
        with PostgresSaver.from_conn_string(postgres_saver_dsn) as saver:
            if serde is not None:
                saver.serde = serde
            saver.setup()
            graph = build(6, saver)
            thread = f"pg-{label}"
            graph.invoke({"document": DOCUMENT, "notes": []}, config(thread))
            assert graph.get_state(config(thread)).values["document"] == DOCUMENT
            with saver._cursor() as cursor:
                cursor.execute(
                    "SELECT coalesce(sum(length(blob)), 0) AS n FROM checkpoint_blobs WHERE thread_id = %s",
                    (thread,),
                )
                row = cursor.fetchone()
                assert row is not None
                blobs = row["n"]
                cursor.execute(
                    "SELECT coalesce(sum(length(blob)), 0) AS n FROM checkpoint_writes WHERE thread_id = %s",
                    (thread,),
                )
                row = cursor.fetchone()
                assert row is not None
                sizes[label] = int(blobs) + int(row["n"])
    assert sizes["toast"] < len(DOCUMENT) // 10 < len(DOCUMENT) < sizes["plain"]
    assert written(blob_url) == 2
    print(
        f"langgraph PostgreSQL blobs+writes: {sizes['plain']} B plain, {sizes['toast']} B with the serializer"
    )


class CountingSerializer(JsonPlusSerializer):
    """LangGraph's serializer, counting how often it serializes the document."""

    def __init__(self) -> None:
        super().__init__()
        self.document_dumps = 0
        self.checkpoints_holding_the_document = 0

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if isinstance(obj, str) and obj == DOCUMENT:
            self.document_dumps += 1
        if isinstance(obj, dict) and DOCUMENT in obj.get("channel_values", {}).values():
            self.checkpoints_holding_the_document += 1
        return super().dumps_typed(obj)


def test_each_value_is_serialized_once_per_save(tmp_path: Path, blob_url: str) -> None:
    inner = CountingSerializer()
    with (
        closing(sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)) as connection,
        connection,
    ):
        build(4, SqliteSaver(connection, serde=ToastSerializer(blob_url, inner=inner))).invoke(
            {"document": DOCUMENT, "notes": []}, config("once")
        )
        saves = connection.execute(
            "SELECT (SELECT count(*) FROM checkpoints WHERE checkpoint_id != "
            "(SELECT min(checkpoint_id) FROM checkpoints)) + "
            "(SELECT count(*) FROM writes WHERE channel = 'document')"
        ).fetchone()[0]
    # Once per checkpoint that holds it (every one after the input's) and once for its write;
    # the checkpoint around it is serialized with a marker in its place, never with the value.
    assert saves >= 5
    assert inner.document_dumps == saves
    assert inner.checkpoints_holding_the_document == 0
