"""Log lines and OpenTelemetry spans per round trip, slow-operation and retry warnings, size limits."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

import pydantic_toast
from fixtures.servers import free_port
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    observability,
)
from pydantic_toast.backends.base import BackendStats

SECRET = "s3cret-Pa55word"
MARKER = "PAYLOAD-MARKER-7f3a"


def models(storage: str, **config: Any) -> tuple[Any, Any]:
    class Item(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=storage, **config)  # type: ignore[typeddict-item]

    class Basket(ExternalBaseModel):
        label: str
        items: list[Item]
        model_config = ExternalConfigDict(storage=storage, **config)  # type: ignore[typeddict-item]

    return Basket, Item


@pytest.fixture
def tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    """An SDK tracer with an in-memory exporter, used by the library in place of the global one."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observability, "_tracer", provider.get_tracer("pydantic_toast"))
    yield provider.get_tracer("tests"), exporter
    provider.shutdown()


@pytest.fixture
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if opentelemetry-api were not installed."""
    monkeypatch.setattr(observability, "_tracer", None)


@pytest.fixture
def slow_threshold() -> Iterator[None]:
    yield
    observability.configure()


def toast_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.instrumentation_scope is not None and span.instrumentation_scope.name == "pydantic_toast"
    ]


def toast_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("pydantic_toast")]


# --------------------------------------------------------------------------- logging


async def test_a_debug_line_per_round_trip(
    storage_url: str, caplog: pytest.LogCaptureFixture, no_tracing: None
) -> None:
    basket_type, item_type = models(storage_url)
    basket = basket_type(label="b", items=[item_type(text="x"), item_type(text="y")])
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"):
        reference = await basket.save()
        await basket_type.load(reference)
    lines = [(r.toast_operation, r.toast_class_names, r.toast_records) for r in toast_lines(caplog)]  # type: ignore[attr-defined]
    # One batch for the dump (one store); loads: the basket, then its items.
    assert lines == [("save", ["Basket", "Item"], 3), ("load", ["Basket"], 1), ("load", ["Item"], 2)]
    first = toast_lines(caplog)[0]
    assert first.levelno == logging.DEBUG
    assert first.toast_bytes_out > 0  # type: ignore[attr-defined]
    assert first.toast_outcome == "ok"  # type: ignore[attr-defined]
    assert "save records=3" in first.getMessage()


async def test_nothing_is_logged_at_the_default_level(
    memory_url: str, caplog: pytest.LogCaptureFixture, no_tracing: None
) -> None:
    basket_type, item_type = models(memory_url)
    with caplog.at_level(logging.INFO, logger="pydantic_toast"):
        await basket_type.load(await basket_type(label="b", items=[item_type(text="x")]).save())
    assert toast_lines(caplog) == []


def test_the_library_installs_no_handler() -> None:
    assert logging.getLogger("pydantic_toast").handlers == []


async def test_no_secret_and_no_payload_in_logs_or_spans(
    caplog: pytest.LogCaptureFixture, tracing: tuple[Tracer, InMemorySpanExporter], slow_threshold: None
) -> None:
    _, exporter = tracing
    observability.configure(slow_threshold=0)  # the warning path too
    basket_type, item_type = models(f"memory://user:{SECRET}@obs-secret")
    basket = basket_type(label=MARKER, items=[item_type(text=MARKER)])
    failing_type, _ = models(f"postgresql://user:{SECRET}@127.0.0.1:{free_port()}/db?connect_timeout=2")
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"):
        reference = basket.model_dump()
        basket_type.model_validate(reference)
        with pytest.raises(StorageConnectionError):
            await failing_type(label=MARKER, items=[]).save()
    shown = [record.getMessage() for record in toast_lines(caplog)]
    shown += [repr(vars(record)) for record in toast_lines(caplog)]
    for span in toast_spans(exporter):
        shown.append(span.to_json())
    assert len(shown) >= 6
    text = "\n".join(shown)
    assert SECRET not in text
    assert MARKER not in text
    assert "user:***@" in text


async def test_slow_operations_warn_without_debug(
    memory_url: str, caplog: pytest.LogCaptureFixture, no_tracing: None, slow_threshold: None
) -> None:
    _, item_type = models(memory_url)
    observability.configure(slow_threshold=0)
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
        await item_type(text="x").save()
    [line] = toast_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "slow storage operation on memory://" in line.getMessage()
    observability.configure(slow_threshold=None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
        await item_type(text="x").save()
    assert toast_lines(caplog) == []


async def test_slow_operations_warn_with_details_when_debug_is_on(
    memory_url: str, caplog: pytest.LogCaptureFixture, no_tracing: None, slow_threshold: None
) -> None:
    _, item_type = models(memory_url)
    observability.configure(slow_threshold=0)
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"):
        await item_type(text="x").save()
    [line] = toast_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "slow memory save records=1" in line.getMessage()


def test_slow_threshold_is_checked() -> None:
    with pytest.raises(StorageValidationError, match="slow_threshold"):
        observability.configure(slow_threshold=-1)
    with pytest.raises(StorageValidationError, match="slow_threshold"):
        observability.configure(slow_threshold="1")  # type: ignore[arg-type]


@pytest.mark.redis
async def test_redis_retries_are_warned(caplog: pytest.LogCaptureFixture, no_tracing: None) -> None:
    _, item_type = models(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0?retries=2&socket_connect_timeout=1")
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"), pytest.raises(StorageConnectionError):
        await item_type(text="x").save()
    retries = [line.getMessage() for line in toast_lines(caplog) if "retrying" in line.getMessage()]
    # A warning per retry, none for the attempt after which it gives up (redis-py may run more
    # than one retry loop for one command: connecting, then sending).
    attempts = [message.rsplit("(", 1)[1] for message in retries]
    assert attempts[:2] == ["attempt 2 of 3)", "attempt 3 of 3)"]
    assert set(attempts) == {"attempt 2 of 3)", "attempt 3 of 3)"}
    assert all(message.startswith("pydantic-toast: redis command failed (") for message in retries)
    assert SECRET not in "".join(retries)


# --------------------------------------------------------------------------- OpenTelemetry


async def test_one_span_per_round_trip_child_of_the_callers_span(
    storage_url: str, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    basket_type, item_type = models(storage_url)
    with tracer.start_as_current_span("request") as request:
        reference = await basket_type(label="b", items=[item_type(text="x"), item_type(text="y")]).save()
        await basket_type.load(reference)
    spans = toast_spans(exporter)
    system = storage_url.split(":")[0]
    assert [span.name for span in spans] == [f"save {system}", "load Basket", "load Item"]
    for span in spans:
        assert span.parent is not None
        assert span.parent.span_id == request.get_span_context().span_id
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["db.system.name"] == system
        assert span.status.status_code is StatusCode.UNSET
    save_items = spans[0].attributes
    assert save_items is not None
    assert save_items["db.operation.name"] == "save"
    assert "db.collection.name" not in save_items  # two classes in one batch
    assert save_items["pydantic_toast.class_names"] == ("Basket", "Item")
    assert save_items["db.operation.batch.size"] == 3
    assert save_items["pydantic_toast.bytes_out"] > 0  # type: ignore[operator]
    load_basket = spans[1].attributes
    assert load_basket is not None
    assert load_basket["db.collection.name"] == "Basket"
    assert "db.operation.batch.size" not in load_basket  # a single record is no batch
    load_items = spans[2].attributes
    assert load_items is not None
    assert load_items["db.response.returned_rows"] == 2
    assert load_items["pydantic_toast.bytes_in"] > 0  # type: ignore[operator]
    if system in ("postgresql", "redis"):
        assert save_items["server.address"] == "127.0.0.1"
        assert isinstance(save_items["server.port"], int)


def test_sync_calls_from_a_thread_are_children_of_the_callers_span(
    memory_url: str, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    _, item_type = models(memory_url)
    parents: list[int] = []

    def work() -> None:
        with tracer.start_as_current_span("job") as job:
            parents.append(job.get_span_context().span_id)
            item_type.model_validate(item_type(text="x").model_dump())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    spans = toast_spans(exporter)
    assert [span.name for span in spans] == ["save Item", "load Item"]
    assert all(span.parent is not None and span.parent.span_id == parents[0] for span in spans)


async def test_sync_calls_inside_a_running_loop_are_children_of_the_callers_span(
    memory_url: str, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    _, item_type = models(memory_url)
    asyncio.get_running_loop()
    with tracer.start_as_current_span("handler") as handler:
        item_type.model_validate(item_type(text="x").model_dump())
    spans = toast_spans(exporter)
    assert len(spans) == 2
    for span in spans:
        assert span.parent is not None
        assert span.parent.span_id == handler.get_span_context().span_id


async def test_a_failed_round_trip_is_an_error_span(tracing: tuple[Tracer, InMemorySpanExporter]) -> None:
    _, exporter = tracing
    _, item_type = models(f"postgresql://user:{SECRET}@127.0.0.1:{free_port()}/db?connect_timeout=2")
    with pytest.raises(StorageConnectionError):
        await item_type(text="x").save()
    [span] = toast_spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "StorageConnectionError"
    [event] = span.events
    assert event.name == "exception"
    assert SECRET not in span.to_json()


async def test_a_missing_record_is_not_an_error_of_the_round_trip(
    memory_url: str, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    _, exporter = tracing
    _, item_type = models(memory_url)
    missing = {"class_name": "Item", "id": "00000000-0000-4000-8000-000000000000"}
    with pytest.raises(RecordNotFoundError):
        await item_type.load(missing)
    [span] = toast_spans(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["db.response.returned_rows"] == 0


def test_without_opentelemetry_installed_nothing_is_traced(tmp_path: Any) -> None:
    script = f"""
import logging, sys
sys.modules["opentelemetry"] = None  # an ImportError on import, as when it is not installed
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, observability
class Item(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(storage="sqlite:///{tmp_path / "t.db"}")
Item.model_validate(Item(text="x").model_dump())
assert observability._active_tracer() is None
assert not observability.enabled()
logging.basicConfig(level=logging.DEBUG)
assert observability.enabled()
Item(text="y").model_dump()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pydantic-toast: sqlite save records=1" in done.stderr


def test_an_application_that_never_imports_opentelemetry_does_not_import_it(tmp_path: Any) -> None:
    script = f"""
import sys
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
class Item(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(storage="sqlite:///{tmp_path / "t.db"}")
Item.model_validate(Item(text="x").model_dump())
assert not [name for name in sys.modules if name.startswith("opentelemetry")], "imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_global_tracer_provider_is_followed(tmp_path: Any) -> None:
    script = f"""
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
class Item(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(storage="sqlite:///{tmp_path / "t.db"}")
from pydantic_toast import observability
Item(text="before").model_dump()  # the tracer is looked up before any provider is set
assert not observability.enabled()  # the API alone: no span is made at all
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
Item(text="after").model_dump()
print([span.name for span in exporter.get_finished_spans()])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['save Item']"


# --------------------------------------------------------------------------- record sizes


async def test_warn_size_logs_the_model_and_size(storage_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _, item_type = models(storage_url, warn_size=100)
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
        await item_type(text="small").save()
        assert toast_lines(caplog) == []
        await item_type(text="x" * 200).save()
    [line] = toast_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "Item record of 211 bytes (data as JSON) is above warn_size=100" in line.getMessage()


async def test_max_size_refuses_the_whole_dump_before_any_io(storage_url: str) -> None:
    basket_type, item_type = models(storage_url, max_size=100)
    small, big = item_type(text="small"), item_type(text="x" * 200)
    basket = basket_type(label="b", items=[small, big])
    with pytest.raises(
        StorageValidationError, match=r"Item cannot be stored: its data takes 211 bytes"
    ) as info:
        await basket.save()
    assert "max_size of 100 bytes; nothing of this save was written" in str(info.value)
    with pytest.raises(StorageValidationError, match="max_size"):
        basket.model_dump()  # the sync path raises it unwrapped too
    with pytest.raises(StorageValidationError, match="max_size"):
        pydantic_toast.dump(basket)
    for model in (basket, small, big):
        assert model.external_reference is not None  # ids are given while planning...
        with pytest.raises(RecordNotFoundError):  # ...but nothing was written
            await type(model).load(model.external_reference)


def test_size_options_are_checked() -> None:
    with pytest.raises(StorageValidationError, match="max_size must be a whole number of bytes"):
        models("memory://sizes", max_size=0)
    with pytest.raises(StorageValidationError, match="warn_size must be a whole number of bytes"):
        models("memory://sizes", warn_size="1kB")


@pytest.mark.postgresql
async def test_postgresql_retries_are_warned(
    postgresql_url: str, caplog: pytest.LogCaptureFixture, no_tracing: None
) -> None:
    from urllib.parse import urlsplit, urlunsplit
    from uuid import uuid4

    from fixtures.postgresql import sql, with_options
    from test_postgresql_failures import StaleMaker

    parts = urlsplit(postgresql_url)
    relay = StaleMaker(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    table = f"t_{uuid4().hex[:16]}"
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = with_options(urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{port}")), table=table)
    try:
        _, item_type = models(url)
        reference = await item_type(text="x").save()
        relay.cut()  # the pooled connection is now dead: the next call fails once, then retries
        with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
            assert (await item_type.load(reference)).text == "x"
        [line] = toast_lines(caplog)
        assert line.getMessage().startswith("pydantic-toast: postgresql load failed (")
        assert line.getMessage().endswith("); retrying")
    finally:
        await pydantic_toast.aclose()
        await relay.close()
        await sql(postgresql_url, f'DROP TABLE IF EXISTS "{table}"')


def test_enabled_follows_every_change_of_the_loggers_level(no_tracing: None) -> None:
    logger = observability.logger
    level, disabled = logger.level, logger.disabled
    try:
        logger.setLevel(logging.WARNING)
        assert not observability.enabled()
        logger.setLevel(logging.DEBUG)
        assert observability.enabled()
        logger.disabled = True  # what logging.config does to loggers it does not name
        assert not observability.enabled()
        logger.disabled = False
        logging.disable(logging.DEBUG)
        assert not observability.enabled()
        logging.disable(logging.NOTSET)
        assert observability.enabled()
        logger.setLevel(logging.NOTSET)  # the root logger's level decides again
        root = logging.getLogger()
        root_level = root.level
        root.setLevel(logging.DEBUG)
        assert observability.enabled()
        root.setLevel(logging.INFO)
        assert not observability.enabled()
        root.setLevel(root_level)
    finally:
        logging.disable(logging.NOTSET)
        logger.setLevel(level)
        logger.disabled = disabled


def test_an_unlooked_up_tracer_is_looked_up_once_opentelemetry_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(observability, "_tracer", observability._UNSET)
    monkeypatch.setattr(observability, "_provider_named", False)
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)
    looked_up: list[bool] = []
    monkeypatch.setattr(observability, "_active_tracer", lambda: looked_up.append(True))

    assert not observability.enabled()
    assert looked_up == []  # never imported: nobody can have set a provider
    monkeypatch.setattr(observability, "_provider_named", True)
    assert not observability.enabled()
    assert looked_up == [True]  # named by the environment: looked up


def test_counters_add_exactly_from_many_threads() -> None:
    counters = BackendStats()

    def work() -> None:
        for number in range(2000):
            counters.add(written=number % 3, read=number % 2, bytes_written=5, raw_bytes_written=number % 7)
            counters.add()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert counters.snapshot() == {
        "round_trips": 16000,
        "records_written": 4 * sum(number % 3 for number in range(2000)),
        "records_read": 4 * 1000,
        "bytes_written": 4 * 2000 * 5,
        "raw_bytes_written": 4 * sum(number % 7 for number in range(2000)),
    }
