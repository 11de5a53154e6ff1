"""The operator commands, run in-process against every backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from fixtures.stored import store_raw, stored_version
from models import note_model
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.cli import build_parser, copy_records, main


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
    assert main(["inspect", storage_url, "not-an-id"]) == 2
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
    note = note_model(storage_url, ttl=timedelta(milliseconds=300))
    note(text="short-lived").model_dump()
    time.sleep(0.5)
    assert main(["purge-expired", storage_url]) == 0
    output = capsys.readouterr().out
    assert "purged" in output


def test_upgrade_command_rewrites_outdated_records(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
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

    assert main(["upgrade", storage_url, "--model", f"{module}:Nope"]) == 2
    assert "not an ExternalBaseModel" in capsys.readouterr().err


def test_unknown_scheme_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "nosuch://user:s3cret-sentinel@host/db"]) == 2
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


@pytest.mark.parametrize("command", ["copy memory://a memory://b", "upgrade memory://a --model m:C"])
@pytest.mark.parametrize("size", ["0", "-3", "ten"])
def test_batch_size_must_be_positive(command: str, size: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command.split(), "--batch-size", size])
    assert exited.value.code == 2
    assert (
        f"argument --batch-size: must be a whole number of at least 1, got '{size}'"
        in capsys.readouterr().err
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pydantic_toast", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A user error is one line on stderr, never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


READ_COMMANDS = [
    ["stats", "{url}"],
    ["stats", "{url}", "--json"],
    ["inspect", "{url}", "550e8400-e29b-41d4-a716-446655440000"],
    ["copy", "{url}", "memory://elsewhere"],
    ["purge-expired", "{url}"],
    ["upgrade", "{url}", "--model", "{module}:Person"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_reading_a_mistyped_sqlite_path_fails_and_creates_nothing(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///tosat.db"
    module = f"cli_missing_{uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict\n"
        "class Person(ExternalBaseModel):\n"
        "    name: str\n"
        f"    model_config = ExternalConfigDict(storage={url!r}, schema_version=2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    before = sorted(path.name for path in tmp_path.iterdir())

    assert main([part.format(url=url, module=module) for part in command]) == 1
    error = capsys.readouterr().err
    assert f"no SQLite database at {str(tmp_path / 'tosat.db')!r}" in error
    assert "check the path" in error
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "__pycache__") == before


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_reading_a_missing_postgresql_table_fails_and_creates_nothing(
    command: list[str],
    postgresql_table_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    module = f"cli_missing_pg_{uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict\n"
        "class Person(ExternalBaseModel):\n"
        "    name: str\n"
        f"    model_config = ExternalConfigDict(storage={postgresql_table_url!r}, schema_version=2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    table = postgresql_table_url.rsplit("table=", 1)[1]

    assert main([part.format(url=postgresql_table_url, module=module) for part in command]) == 1
    error = capsys.readouterr().err
    assert f'table "{table}" does not exist' in error
    assert "'?table='" in error
    assert "only reads" in error

    async def exists() -> bool:
        connection = await asyncpg.connect(postgresql_table_url.split("?", 1)[0])
        try:
            return bool(await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
        finally:
            await connection.close()

    assert not asyncio.run(exists())


def test_reading_a_sqlite_database_without_the_table_fails_and_writes_nothing(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    note_model(sqlite_url)(text="kept").model_dump()
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    before = database.read_bytes()

    assert main(["stats", sqlite_url + "?table=notes_typo"]) == 1
    error = capsys.readouterr().err
    assert "has no table 'notes_typo'" in error
    assert "?table=" in error
    assert database.read_bytes() == before

    assert main(["stats", sqlite_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["Note"]["records"] == 1


def test_copy_still_creates_a_missing_sqlite_destination(
    memory_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note_model(memory_url)(text="copied").model_dump()
    destination = tmp_path / "new" / "copy.db"
    destination.parent.mkdir()
    assert main(["copy", memory_url, f"sqlite:///{destination}", "--state-file", str(tmp_path / "s")]) == 0
    assert "missing in destination: 0" in capsys.readouterr().out
    assert destination.is_file()


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (["upgrade", "sqlite:///toast.db", "--model", "nosuchmodule:C"], 2, "--model 'nosuchmodule' failed"),
        (["upgrade", "sqlite:///toast.db", "--model", "json"], 2, "takes 'module:Class'"),
        (["demo", "--storage", "foo://x"], 2, "no storage backend for scheme 'foo'"),
        (["demo", "--storage", "redis://127.0.0.1:1/0?retries=0"], 1, "check that the server is running"),
        (["stats", "toast.db"], 2, "has no scheme"),
        (["stats", "sqlite:///toast.db?colour=blue"], 2, "unknown sqlite option"),
        (["inspect", "memory://", "not-an-id"], 2, "must be a UUID"),
        (["inspect", "memory://", "550e8400-e29b-41d4-a716-446655440000"], 1, "no record"),
        (["--import", "nosuchmodule", "stats", "memory://"], 2, "--import 'nosuchmodule' failed"),
    ],
)
def test_user_errors_are_one_line_and_a_documented_exit_status(
    args: list[str], status: int, fragment: str, tmp_path: Path
) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == status, result.stderr
    line = one_error_line(result)
    assert line.startswith(f"pydantic-toast {args[2] if args[0] == '--import' else args[0]}: error: ")
    assert fragment in line


def test_demo_on_an_unreachable_redis_with_default_retries_ends_in_one_error_line(tmp_path: Path) -> None:
    # The exact command: the retries are announced as warnings, then one error, no traceback.
    result = run_cli("demo", "--storage", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    *warnings, error = result.stderr.strip().splitlines()
    assert error.startswith("pydantic-toast demo: error: ")
    assert "check that the server is running" in error
    assert warnings
    assert all(line.startswith("pydantic-toast: redis command failed") for line in warnings), warnings


def test_a_module_failing_inside_its_import_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('half-written module')\n")
    result = run_cli("upgrade", "memory://", "--model", "broken_models:M", cwd=tmp_path)
    assert result.returncode == 2
    assert "RuntimeError: half-written module" in one_error_line(result)


SHELF = """
from pydantic_toast import register_backend
from pydantic_toast.backends.memory import MemoryBackend


class ShelfBackend(MemoryBackend):
    pass


register_backend("shelf", ShelfBackend)
"""


def test_import_option_makes_backends_registered_in_code_usable(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "shelf_backend.py").write_text(SHELF)
    note = note_model(sqlite_url)
    for i in range(3):
        note(text=f"n{i}").model_dump()

    without = run_cli("copy", sqlite_url, "shelf://x", cwd=tmp_path)
    assert without.returncode == 2
    assert "no storage backend for scheme 'shelf'" in one_error_line(without)

    for args in (
        ["--import", "shelf_backend", "copy", sqlite_url, "shelf://x"],
        ["copy", sqlite_url, "shelf://x", "--import", "shelf_backend"],
        ["--import", "json", "copy", "--import", "shelf_backend", sqlite_url, "shelf://x"],
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "copied 3 records" in result.stdout
        assert "missing in destination: 0" in result.stdout


def test_every_argument_of_every_command_has_help_text() -> None:
    parser = build_parser()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert set(commands.choices) == {
        "demo",
        "inspect",
        "stats",
        "copy",
        "purge-expired",
        "upgrade",
        "rotate-keys",
        "gc",
    }
    for name, command in commands.choices.items():
        assert command.description, name
        assert "exit status" in (command.epilog or ""), name
        for action in command._actions:
            assert action.help, f"{name} {action.dest}"
    for action in parser._actions:
        assert action.help, action.dest
    assert "exit status" in (parser.epilog or "")


def test_the_readme_documents_every_command_and_the_import_option() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    [commands] = [
        action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
    ]
    for name in commands.choices:
        assert f"| `{name}" in section, name
    # Backends registered in code rather than through an entry point reach the CLI this way.
    assert "`--import MODULE`" in section


def test_help_and_version_print_and_exit_zero(tmp_path: Path) -> None:
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    assert "--import MODULE" in top.stdout
    assert "2    usage error" in top.stdout
    copy_help = run_cli("copy", "--help", cwd=tmp_path)
    assert ".pydantic-toast-copy-<hash>.json" in copy_help.stdout
    version = run_cli("--version", cwd=tmp_path)
    assert version.stdout.strip() == f"pydantic-toast {pydantic_toast.__version__}"


def test_demo_leaves_no_record_in_the_store_it_is_given(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--storage", sqlite_url]) == 0
    assert "deleted    await user.delete() == True" in capsys.readouterr().out
    assert main(["stats", sqlite_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {}


FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/../calls.log"
"""


@pytest.mark.parametrize(
    ("script", "installed"),
    [("demo.sh", "-e ."), ("test.sh", "-e .[dev]"), ("check.sh", "-e .[dev]")],
)
def test_scripts_install_only_what_they_need(script: str, installed: str, tmp_path: Path) -> None:
    # A stand-in virtualenv whose tools only log their arguments: what each script would install
    # and run, checked without touching the network or a real environment.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("python", "ruff", "mypy"):
        (venv / "bin" / tool).write_text(FAKE_TOOL)
        (venv / "bin" / tool).chmod(0o755)
    root = Path(__file__).resolve().parents[1]
    environment = {"PATH": "/usr/bin:/bin", "VENV": str(venv), "PYTHON": sys.executable}
    subprocess.run(["bash", str(root / "scripts" / script)], env=environment, check=True, timeout=60)
    installs = [line for line in (venv / "calls.log").read_text().splitlines() if " install " in line]
    assert installs[-1].endswith(f" {installed}"), installs


def test_a_bad_state_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    assert main(["copy", "memory://a", "memory://b", "--state-file", str(garbage)]) == 2
    assert "delete it, or pass --state-file" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "dir" / "state.json"
    assert main(["copy", "memory://a", "memory://b", "--state-file", str(missing)]) == 2
    assert "does not exist; create it" in capsys.readouterr().err


def test_an_interruption_is_one_line_and_status_130(tmp_path: Path) -> None:
    (tmp_path / "ctrl_c.py").write_text("raise KeyboardInterrupt\n")
    result = run_cli("--import", "ctrl_c", "copy", "memory://a", "memory://b", cwd=tmp_path)
    assert result.returncode == 130
    assert one_error_line(result) == "pydantic-toast copy: interrupted; run the same command again to resume"
