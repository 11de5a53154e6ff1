"""The operator commands, run in-process against every backend."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.cli import copy_records, main


def note_model(storage: str, ttl: timedelta | None = None) -> Any:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=storage, ttl=ttl)

    return Note


def test_inspect_prints_the_envelope(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    note = note_model(storage_url)
    reference = note(text="hello").model_dump()

    assert main(["inspect", storage_url, reference["id"], "--class", "Note"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"] == {"text": "hello"}
    assert shown["schema_version"] == 1
    assert shown["class_name"] == "Note"

    assert main(["inspect", storage_url, reference["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == reference["id"]

    assert main(["inspect", storage_url, str(uuid4())]) == 1
    assert "no record" in capsys.readouterr().err
    assert main(["inspect", storage_url, "not-an-id"]) == 1
    assert "must be a UUID" in capsys.readouterr().err


def test_stats_counts_records_bytes_and_expired(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    note = note_model(storage_url)

    class Memo(ExternalBaseModel):
        body: str
        model_config = ExternalConfigDict(storage=storage_url)

    for i in range(3):
        note(text=f"n{i}").model_dump()
    Memo(body="x" * 1000).model_dump()

    assert main(["stats", storage_url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["Note"]["records"] == 3
    assert rows["Memo"]["records"] == 1
    assert rows["Memo"]["bytes"] > 1000
    assert rows["Note"]["oldest"] <= rows["Note"]["newest"]

    assert main(["stats", storage_url]) == 0
    table = capsys.readouterr().out
    assert "Memo" in table
    assert "total" in table


def test_copy_between_backends_is_resumable(
    storage_url: str, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    note = note_model(storage_url)
    for i in range(25):
        note(text=f"note {i}").model_dump()
    destination = sqlite_url.replace("toast.db", "copy.db")
    state = tmp_path / "copy-state.json"

    interrupted = asyncio.run(
        copy_records(
            storage_url,
            destination,
            class_name="Note",
            batch=10,
            state_file=state,
            restart=False,
            out=sys.stdout,
            err=sys.stderr,
            stop_after_batches=1,
        )
    )
    assert interrupted == 3
    saved = json.loads(state.read_text())
    assert saved["copied"] == 10
    assert "://" not in state.read_text()

    assert (
        main(
            [
                "copy",
                storage_url,
                destination,
                "--class",
                "Note",
                "--batch-size",
                "10",
                "--state-file",
                str(state),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "resuming after 10 records" in captured.err
    assert "copied 25 records" in captured.out
    assert "source holds 25, destination holds 25; missing in destination: 0" in captured.out
    assert not state.exists()

    assert main(["stats", destination, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["Note"]["records"] == 25


def test_purge_expired(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    note = note_model(storage_url, ttl=timedelta(milliseconds=300))
    note(text="short-lived").model_dump()
    time.sleep(0.5)
    assert main(["purge-expired", storage_url]) == 0
    output = capsys.readouterr().out
    assert "purged" in output


def test_upgrade_command_rewrites_outdated_records(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from test_upgrades import store_raw, stored_version

    module = f"cli_models_{uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from typing import Any
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict, upgrade

            class Person(ExternalBaseModel):
                full_name: str
                model_config = ExternalConfigDict(storage={storage_url!r}, schema_version=2)

                @upgrade(from_version=1)
                def _rename(data: dict[str, Any]) -> dict[str, Any]:
                    data["full_name"] = data.pop("name")
                    return data
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ids = [asyncio.run(store_raw(storage_url, "Person", {"name": f"p{i}"}, version=1)) for i in range(5)]

    assert main(["upgrade", storage_url, "--model", f"{module}:Person", "--dry-run"]) == 0
    assert "5 records would be upgraded to version 2 (5 at version 1)" in capsys.readouterr().out
    assert asyncio.run(stored_version(storage_url, "Person", ids[0])) == 1

    assert main(["upgrade", storage_url, "--model", f"{module}:Person", "--batch-size", "2"]) == 0
    assert "upgraded 5 records to version 2" in capsys.readouterr().out
    assert all(asyncio.run(stored_version(storage_url, "Person", i)) == 2 for i in ids)

    assert main(["upgrade", storage_url, "--model", f"{module}:Nope"]) == 1
    assert "not an ExternalBaseModel" in capsys.readouterr().err


def test_unknown_scheme_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "nosuch://user:s3cret-sentinel@host/db"]) == 1
    err = capsys.readouterr().err
    assert "no storage backend for scheme 'nosuch'" in err
    assert "s3cret-sentinel" not in err


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pydantic_toast", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for command in ("demo", "inspect", "stats", "copy", "purge-expired", "upgrade"):
        assert command in result.stdout


def test_batch_size_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["copy", "memory://a", "memory://b", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
