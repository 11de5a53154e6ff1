"""Big payloads: a 50 MB model round-trips on the SQL backends."""

from __future__ import annotations

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FIFTY_MB = 50 * 1024 * 1024


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_a_50_mb_model_round_trips(sql_url: str) -> None:
    class Blob(ExternalBaseModel):
        text: str
        numbers: list[int]
        model_config = ExternalConfigDict(storage=sql_url, timeout=120)

    chunk = "pydantic-toast é \U0001f600 "
    blob = Blob(text=chunk * (FIFTY_MB // len(chunk.encode())), numbers=list(range(1000)))

    reference = await blob.save()
    loaded = await Blob.load(reference)

    assert len(loaded.text.encode()) >= FIFTY_MB - len(chunk.encode())
    assert loaded == blob
    assert Blob.model_validate(blob.model_dump()) == blob
