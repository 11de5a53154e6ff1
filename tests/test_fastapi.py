"""FastAPI: external models in request and response bodies travel as references."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel

from pydantic_toast import ExternalBaseModel, ExternalConfigDict


class Report(ExternalBaseModel):
    title: str
    rows: list[int]
    model_config = ExternalConfigDict(storage="memory://fastapi-tests")


class Envelope(BaseModel):
    report: Report
    note: str


app = FastAPI()


@app.post("/reports")
def create(report: Report) -> Envelope:
    return Envelope(report=report, note="stored")


@app.post("/echo")
async def echo(envelope: Envelope) -> dict[str, Any]:
    return {"title": envelope.report.title, "rows": len(envelope.report.rows)}


async def test_response_holds_a_reference_and_request_accepts_it() -> None:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        created = await client.post("/reports", json={"title": "Q3", "rows": list(range(1000))})
        assert created.status_code == 200, created.text
        reference = created.json()["report"]
        assert set(reference) == {"class_name", "id"}

        echoed = await client.post("/echo", json={"report": reference, "note": "n"})
        assert echoed.status_code == 200, echoed.text
        assert echoed.json() == {"title": "Q3", "rows": 1000}

        missing_id = "00000000-0000-4000-8000-000000000000"
        missing = await client.post(
            "/echo", json={"report": {"class_name": "Report", "id": missing_id}, "note": "n"}
        )
        assert missing.status_code == 422
        assert "no stored Report record" in missing.text
        forged = await client.post(
            "/echo", json={"report": {"class_name": "Admin", "id": reference["id"]}, "note": "n"}
        )
        assert forged.status_code == 422
    assert Report.model_validate(reference).title == "Q3"


def test_openapi_schema_builds() -> None:
    schema = app.openapi()
    assert "Report" in str(schema)
