"""FastAPI: external models in request and response bodies travel as references.

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
and the models are built per backend inside a function.
"""

from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict


def build_app(storage: str) -> tuple[FastAPI, Any]:
    class Row(ExternalBaseModel):
        cells: list[int]
        model_config = ExternalConfigDict(storage=storage)

    class Report(ExternalBaseModel):
        title: str
        rows: list[Row]
        model_config = ExternalConfigDict(storage=storage)

    class Envelope(BaseModel):
        report: Report
        note: str

    app = FastAPI()

    @app.post("/reports")
    def create(report: Report) -> Envelope:
        return Envelope(report=report, note="stored")

    @app.post("/reports/batched")
    async def create_batched(report: Report) -> dict[str, Any]:
        # One write batch per backend for the whole response, on this loop.
        result: dict[str, Any] = await pydantic_toast.adump(
            Envelope(report=report, note="stored"), mode="json"
        )
        return result

    @app.post("/echo")
    async def echo(envelope: Envelope) -> dict[str, Any]:
        return {"title": envelope.report.title, "rows": [sum(row.cells) for row in envelope.report.rows]}

    @app.get("/reports/{report_id}")
    async def read(report_id: str) -> dict[str, Any]:
        report = await Report.load(report_id)
        return report.model_dump(context={"pydantic_toast": "inline"})

    return app, Report


@pytest.mark.parametrize("path", ["/reports", "/reports/batched"])
async def test_response_holds_references_and_request_accepts_them(storage_url: str, path: str) -> None:
    app, report_type = build_app(storage_url)
    body = {"title": "Q3", "rows": [{"cells": list(range(n))} for n in range(5)]}
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        created = await client.post(path, json=body)
        assert created.status_code == 200, created.text
        reference = created.json()["report"]
        assert set(reference) == {"class_name", "id"}

        echoed = await client.post("/echo", json={"report": reference, "note": "n"})
        assert echoed.status_code == 200, echoed.text
        assert echoed.json() == {"title": "Q3", "rows": [sum(range(n)) for n in range(5)]}

        full = await client.get(f"/reports/{reference['id']}")
        assert full.json() == body

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
    assert report_type.model_validate(reference).title == "Q3"


def test_openapi_schema_builds(memory_url: str) -> None:
    app, _ = build_app(memory_url)
    assert "Report" in str(app.openapi())
