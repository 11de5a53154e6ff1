"""`pydantic-toast copy` between real servers: 10,000 records from Redis to PostgreSQL, resumed."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from conftest import delete_redis_keys
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.cli import copy_records, main

pytestmark = [pytest.mark.redis, pytest.mark.postgresql, pytest.mark.slow]

RECORDS = 10_000


@pytest.fixture
def redis_prefixed_url(redis_url: str) -> Iterator[str]:
    prefix = f"t_{uuid4().hex[:12]}"
    yield redis_url + ("&" if "?" in redis_url else "?") + f"prefix={prefix}"
    delete_redis_keys(redis_url, prefix)


def test_copy_10000_records_from_redis_to_postgresql_resuming_after_an_interruption(
    redis_prefixed_url: str, postgresql_table_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Invoice(ExternalBaseModel):
        number: int
        lines: list[str]
        model_config = ExternalConfigDict(storage=redis_prefixed_url)

    class Other(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=redis_prefixed_url)

    async def fill() -> None:
        for start in range(0, RECORDS, 2000):
            await Invoice.save_many(
                [Invoice(number=n, lines=[f"line {n}"] * 3) for n in range(start, start + 2000)]
            )
        await Other(text="not copied").save()

    asyncio.run(fill())
    state = tmp_path / "copy.json"

    interrupted = asyncio.run(
        copy_records(
            redis_prefixed_url,
            postgresql_table_url,
            class_name="Invoice",
            batch=1000,
            state_file=state,
            restart=False,
            out=sys.stdout,
            err=sys.stderr,
            stop_after_batches=3,
        )
    )
    assert interrupted == 3
    assert json.loads(state.read_text())["copied"] == 3000
    capsys.readouterr()

    arguments = [
        "copy",
        redis_prefixed_url,
        postgresql_table_url,
        "--class",
        "Invoice",
        "--batch-size",
        "1000",
    ]
    assert main([*arguments, "--state-file", str(state)]) == 0
    output = capsys.readouterr()
    assert "resuming after 3000 records" in output.err
    assert f"source holds {RECORDS}, destination holds {RECORDS}; missing in destination: 0" in output.out

    assert main(["stats", postgresql_table_url, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {"Invoice": counts["Invoice"]}
    assert counts["Invoice"]["records"] == RECORDS
