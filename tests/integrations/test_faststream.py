"""FastStream against the real NATS and RabbitMQ servers on this machine, with its real clients.

The wire is read with a plain nats-py subscription on the same subject: the bytes the server
delivered, not what FastStream hands the handler.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import BaseModel

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, stats

from .conftest import NATS, RABBITMQ, require_server

pytest.importorskip("faststream")

from faststream.nats import NatsBroker
from faststream.rabbit import RabbitBroker, RabbitQueue

from pydantic_toast.integrations.faststream import ToastMiddleware

STORAGE = "memory://faststream-tests"
BODY = "lorem ipsum dolor sit amet " * 4000  # ~108 KB


class Report(ExternalBaseModel):
    title: str
    body: str
    model_config = ExternalConfigDict(storage=STORAGE)


class Envelope(BaseModel):
    """A plain model holding external ones: each travels as its own reference."""

    sender: str
    reports: list[Report]


def written() -> int:
    return stats().get(STORAGE, {}).get("records_written", 0)


async def test_nats_carries_the_reference_and_the_subscriber_gets_the_model() -> None:
    require_server("NATS", NATS, "start nats-server on port 4222")
    import nats

    subject = f"toast-{uuid.uuid4().hex[:8]}"
    broker = NatsBroker(f"nats://{NATS[0]}:{NATS[1]}", middlewares=[ToastMiddleware])
    received: asyncio.Queue[Report] = asyncio.Queue()

    @broker.subscriber(subject)
    async def handle(report: Report) -> None:
        await received.put(report)

    raw = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
    wire = await raw.subscribe(subject)
    try:
        async with broker:
            await broker.start()
            report = Report(title="Q3", body=BODY)
            before = written()
            await broker.publish(report, subject)
            got = await asyncio.wait_for(received.get(), 10)
            message = await wire.next_msg(timeout=10)
    finally:
        await raw.close()
    assert got == report
    assert written() == before + 1
    reference = report.external_reference
    assert reference is not None
    assert str(reference.id).encode() in message.data
    assert len(message.data) < 200 < len(BODY)
    print(f"faststream/NATS message: {len(message.data)} B with the middleware for a {len(BODY)} B body")


async def test_rabbitmq_nested_models_go_in_one_batch_and_unchanged_ones_are_not_rewritten() -> None:
    require_server("RabbitMQ", RABBITMQ, "start it with `rabbitmq-server -detached` (.ci/run does)")
    queue = f"toast-{uuid.uuid4().hex[:8]}"
    broker = RabbitBroker(f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/", middlewares=[ToastMiddleware])
    received: asyncio.Queue[Envelope] = asyncio.Queue()

    @broker.subscriber(RabbitQueue(queue, auto_delete=True))
    async def handle(envelope: Envelope) -> None:
        await received.put(envelope)

    async with broker:
        await broker.start()
        envelope = Envelope(sender="a", reports=[Report(title=str(n), body=BODY) for n in range(3)])
        before = dict(stats().get(STORAGE, {}))
        await broker.publish(envelope, queue)
        got = await asyncio.wait_for(received.get(), 10)
        after = stats()[STORAGE]
        assert got == envelope
        assert after["records_written"] - before.get("records_written", 0) == 3
        # Forwarding what was received: loaded, unchanged, so nothing is written.
        await broker.publish(got, queue)
        again = await asyncio.wait_for(received.get(), 10)
        assert again == envelope
        assert stats()[STORAGE]["records_written"] == after["records_written"]
