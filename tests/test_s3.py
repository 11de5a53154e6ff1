"""The s3:// backend on moto's S3 server: URL checks, the object layout, expiry, credentials and
faults (a wrong secret, a missing bucket, an unreachable, frozen or killed server, and recovery)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import pydantic_toast
from fixtures.s3 import BUCKET, REGION, MotoServer, s3_client
from fixtures.servers import free_port
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    cli,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.objectstore import S3Backend

pytestmark = pytest.mark.s3

SECRET = "Sentinel-secret_9b1e"


def model(storage: str, **config: Any) -> Any:
    settings = ExternalConfigDict(storage=storage, storage_name=f"Doc{uuid4().hex[:8]}")
    settings.update(config)  # type: ignore[typeddict-item]  # test options, checked by the library

    class Document(ExternalBaseModel):
        title: str
        body: str = ""
        model_config = settings

    return Document


def everything_said(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc)), repr(exc), repr(vars(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def bucket_and_prefix(url: str) -> tuple[str, str]:
    without_scheme = url.split("://", 1)[1].split("?", 1)[0]
    bucket, _, prefix = without_scheme.partition("/")
    return bucket, prefix


# ---------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("s3://bucket-name/p?endpoint=http://x", "unknown s3 option(s) ['endpoint']"),
        ("s3://ab/p", "names no valid bucket"),
        ("s3://Bucket-Name/p", "names no valid bucket"),
        ("s3://bucket-name/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket-name/a/../b", "empty, '.' or '..' segment"),
        ("s3://bucket-name?endpoint_url=ftp://host", "must be an http:// or https:// URL"),
        ("s3://bucket-name?region=EU%20West", "an AWS region name"),
        ("s3://bucket-name?timeout=soon", "must be a number"),
        ("s3://bucket-name?concurrency=0", "an integer >= 1"),
    ],
)
def test_bad_urls_are_refused_at_class_definition(url: str, fragment: str) -> None:
    with pytest.raises(StorageValidationError) as caught:
        model(url)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@bucket-name/prefix",
        f"s3://bucket-name/prefix?aws_secret_access_key={SECRET}",
        f"s3://bucket-name/prefix?secret={SECRET}&region=us-east-1",
        f"s3://bucket-name/prefix?session_token={SECRET}",
        f"s3://bucket-name/prefix?endpoint_url=http://user:{SECRET}@127.0.0.1:9000",
    ],
)
def test_a_url_carrying_credentials_is_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(StorageValidationError) as caught:
        model(url)
    assert "never holds credentials" in str(caught.value)
    assert "AWS_ACCESS_KEY_ID" in str(caught.value)
    assert SECRET not in everything_said(caught.value)


@pytest.mark.parametrize(
    ("scheme", "url"), [("s3", "s3://bucket-name/p"), ("file", "file:///tmp/toast-files")]
)
def test_a_missing_obstore_is_an_import_error_naming_the_extra(scheme: str, url: str) -> None:
    code = f"""
import sys
sys.modules["obstore"] = None  # as if it were not installed
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, MissingDependencyError
try:
    class Model(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage={url!r})
except MissingDependencyError as exc:
    print(exc)
else:
    raise SystemExit("defined without obstore")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'pydantic-toast[s3]'" in result.stdout
    assert f"the {scheme}:// backend needs the 'obstore' package" in result.stdout


# ---------------------------------------------------------------------- layout


async def test_objects_use_the_upstream_layout_and_hold_the_envelope(
    s3_url: str, s3_server: MotoServer
) -> None:
    document_type = model(s3_url)
    document = document_type(title="hello")
    reference = await document.save()
    bucket, prefix = bucket_and_prefix(s3_url)
    name = document_type.__toast_settings__.storage_name

    stored = s3_client(s3_server).get_object(Bucket=bucket, Key=f"{prefix}/{name}/{reference.id}.json")
    assert stored["ContentType"] == "application/json"
    envelope = json.loads(stored["Body"].read())
    assert envelope["data"] == {"title": "hello", "body": ""}
    assert envelope["schema_version"] == 1
    assert envelope["created_at"].endswith("Z")
    assert envelope["updated_at"].endswith("Z")
    assert "expires_at" not in envelope
    assert "revision" not in envelope


async def test_compressed_payloads_share_the_key_and_are_base64_in_the_envelope(
    s3_url: str, s3_server: MotoServer
) -> None:
    document_type = model(s3_url, compression="zlib", compression_min_size=10)
    document = document_type(title="t", body="compress me " * 100)
    reference = await document.save()
    bucket, prefix = bucket_and_prefix(s3_url)
    key = f"{prefix}/{document_type.__toast_settings__.storage_name}/{reference.id}.json"
    envelope = json.loads(s3_client(s3_server).get_object(Bucket=bucket, Key=key)["Body"].read())
    assert envelope["encoding"] == "json+zlib"
    assert "data" not in envelope
    assert isinstance(envelope["payload"], str)
    assert (await document_type.load(reference)).body == document.body


async def test_objects_written_by_the_upstream_backend_load(s3_url: str, s3_server: MotoServer) -> None:
    # Upstream's S3 backend writes json.dumps(envelope) at {prefix}/{class_name}/{id}.json.
    document_type = model(s3_url)
    bucket, prefix = bucket_and_prefix(s3_url)
    record_id = uuid4()
    envelope = {
        "data": {"title": "from upstream", "body": "b"},
        "schema_version": 1,
        "created_at": "2025-12-23T00:00:00+00:00",
        "updated_at": "2025-12-23T00:05:00+00:00",
    }
    s3_client(s3_server).put_object(
        Bucket=bucket,
        Key=f"{prefix}/{document_type.__toast_settings__.storage_name}/{record_id}.json",
        Body=json.dumps(envelope).encode(),
    )
    loaded = await document_type.load(record_id)
    assert loaded.title == "from upstream"
    with pytest.raises(RecordNotFoundError):
        await document_type.load(uuid4())


# ---------------------------------------------------------------------- expiry, listing


async def test_expiry_travels_with_the_object_and_purge_deletes_in_bulk(
    s3_url: str, s3_server: MotoServer
) -> None:
    backend = S3Backend(s3_url)
    await backend.connect()
    try:
        now = datetime.now(UTC)
        name = f"Expiring{uuid4().hex[:8]}"

        def record(expires: datetime | None) -> StoredRecord:
            return StoredRecord(uuid4(), name, b'{"a":1}', 1, now, now, expires_at=expires)

        expired = [record(now - timedelta(seconds=1)) for _ in range(5)]
        live = [record(now + timedelta(hours=1)), record(None)]
        await backend.save_records([*expired, *live])
        bucket, prefix = bucket_and_prefix(s3_url)
        key = f"{prefix}/{name}/{live[0].id}.json"
        envelope = json.loads(s3_client(s3_server).get_object(Bucket=bucket, Key=key)["Body"].read())
        assert datetime.fromisoformat(envelope["expires_at"]) == live[0].expires_at

        loaded = await backend.load_records([r.key for r in [*expired, *live]])
        assert [r is not None for r in loaded] == [False] * 5 + [True, True]
        assert await backend.delete(*expired[0].key) is False  # expired: not live, removed all the same
        assert await backend.purge_expired() == 4
        listed = s3_client(s3_server).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{name}/")
        assert sorted(item["Key"] for item in listed["Contents"]) == sorted(
            f"{prefix}/{name}/{r.id}.json" for r in live
        )
    finally:
        await backend.disconnect()


async def test_a_foreign_cursor_is_refused(s3_url: str) -> None:
    backend = S3Backend(s3_url)
    await backend.connect()
    try:
        with pytest.raises(StorageValidationError, match="cursor"):
            await backend.scan_records(cursor="not-ours", limit=10)
    finally:
        await backend.disconnect()


def test_objects_that_are_not_records_are_left_out_of_listings(
    s3_url: str, s3_server: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    document_type = model(s3_url)
    document_type(title="one").model_dump()
    bucket, prefix = bucket_and_prefix(s3_url)
    s3_client(s3_server).put_object(Bucket=bucket, Key=f"{prefix}/notes/readme.txt", Body=b"hello")
    s3_client(s3_server).put_object(Bucket=bucket, Key=f"{prefix}/notes/{uuid4()}.json.tmp", Body=b"x")
    assert cli.main(["stats", s3_url, "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert {name: entry["records"] for name, entry in counted.items()} == {
        document_type.__toast_settings__.storage_name: 1
    }


async def test_batches_go_out_in_waves_of_concurrency(s3_url: str) -> None:
    url = s3_url + "&concurrency=10"
    document_type = model(url)
    await document_type(title="warm-up").save()
    documents = [document_type(title=str(i)) for i in range(25)]
    before = pydantic_toast.stats()[url]["round_trips"]
    references = await document_type.save_many(documents)
    assert pydantic_toast.stats()[url]["round_trips"] - before == 3  # 10 + 10 + 5 requests
    assert [d.title for d in await document_type.load_many(references)] == [d.title for d in documents]


# ---------------------------------------------------------------------- revisions


async def test_a_write_between_the_check_and_the_put_is_a_conflict(s3_url: str) -> None:
    """The conditional put (If-Match) catches a writer that the batch's read did not see."""
    writer, rival = S3Backend(s3_url), S3Backend(s3_url)
    await writer.connect()
    await rival.connect()
    try:
        now = datetime.now(UTC)
        first = StoredRecord(uuid4(), "Checked", b'{"v":1}', 1, now, now, revision=1)
        assert await writer.save_records_checked([first]) == []
        check = writer._check_revisions

        async def check_then_rival_writes(latest: Any) -> Any:
            result = await check(latest)
            later = datetime.now(UTC)
            await rival.save_records_checked(
                [StoredRecord(first.id, "Checked", b'{"v":"rival"}', 1, now, later, revision=2)]
            )
            return result

        writer._check_revisions = check_then_rival_writes  # type: ignore[method-assign]
        mine = StoredRecord(first.id, "Checked", b'{"v":"mine"}', 1, now, datetime.now(UTC), revision=2)
        [conflict] = await writer.save_records_checked([mine])
        assert (conflict.expected, conflict.found) == (1, 2)
        [stored] = await rival.load_records([first.key])
        assert stored is not None
        assert stored.payload == b'{"v":"rival"}'
    finally:
        await writer.disconnect()
        await rival.disconnect()


# ---------------------------------------------------------------------- credentials and faults


def test_a_wrong_secret_is_a_connection_error_without_the_secret(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    document_type = model(s3_url)
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        document_type(title="x").model_dump()
    assert time.monotonic() - started < 10
    assert "refused the request" in str(caught.value)
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert SECRET not in everything_said(caught.value)
    chain: list[BaseException] = []
    current: BaseException | None = caught.value
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    assert not [e for e in chain if type(e).__module__.startswith(("obstore", "builtins"))]


def test_credentials_from_a_profile_in_the_shared_files(
    s3_url: str, s3_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[toast]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "toast")
    document_type = model(s3_url)
    reference = document_type(title="via profile").model_dump()
    assert document_type.model_validate(reference).title == "via profile"


def test_a_missing_bucket_is_a_connection_error_naming_it(s3_server: MotoServer) -> None:
    document_type = model(s3_server.url(bucket="no-such-bucket-here", prefix="p"))
    with pytest.raises(StorageConnectionError, match="bucket 'no-such-bucket-here' does not exist"):
        document_type(title="x").model_dump()


def test_an_unreachable_endpoint_fails_within_the_timeout(s3_server: MotoServer) -> None:
    url = f"s3://{BUCKET}/p?endpoint_url=http://127.0.0.1:{free_port()}&region={REGION}&timeout=2"
    document_type = model(url)
    started = time.monotonic()
    with pytest.raises(StorageConnectionError, match="cannot reach the server"):
        document_type(title="x").model_dump()
    assert time.monotonic() - started < 5


def test_a_frozen_server_fails_within_the_model_timeout_and_recovers(
    s3_servers: Callable[..., MotoServer],
) -> None:
    server = s3_servers()
    document_type = model(server.url(prefix="p", timeout="30"), timeout=1.5)
    reference = document_type(title="before").model_dump()
    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StorageConnectionError):
            document_type(title="frozen").model_dump()
        assert time.monotonic() - started < 4
    finally:
        server.resume()
    assert document_type.model_validate(reference).title == "before"


async def test_a_server_killed_mid_workload_gives_clear_errors_and_the_workload_recovers(
    s3_servers: Callable[..., MotoServer],
) -> None:
    server = s3_servers()
    document_type = model(server.url(prefix="p", timeout="2", max_retries="1"))
    outcomes: list[str] = []

    async def worker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                documents = [document_type(title=str(i)) for i in range(20)]
                references = await document_type.save_many(documents)
                loaded = await document_type.load_many(references)
                assert [d.title for d in loaded] == [d.title for d in documents]
                outcomes.append("ok")
            except StorageConnectionError as exc:
                outcomes.append("error" if "failed on" in str(exc) else f"unclear error: {exc}")
                await asyncio.sleep(0.05)

    async def until(condition: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a list
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    workers = [asyncio.create_task(worker(stop)) for _ in range(3)]
    await until(lambda: outcomes.count("ok") >= 2, 20)
    server.kill()
    killed_at = len(outcomes)
    await until(lambda: outcomes[killed_at:].count("error") >= 3, 20)
    errors_while_down = outcomes[killed_at:].count("error")
    server.start()  # same port, an empty server again (moto keeps nothing): the bucket is made anew
    before = len(outcomes)
    await until(lambda: outcomes[before:].count("ok") >= 3, 20)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 20)

    assert not [outcome for outcome in outcomes if outcome.startswith("unclear")]
    assert "ok" in outcomes[:killed_at]
    assert errors_while_down >= 3
    assert outcomes[before:].count("ok") >= 3, "the workload did not recover after the restart"
