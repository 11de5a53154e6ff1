"""`pydantic-toast gc`: records no root reaches are reported (dry run) or deleted (--yes), safely."""

from __future__ import annotations

import asyncio
import importlib
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from fixtures.stored import store_raw
from pydantic_toast import RecordNotFoundError
from pydantic_toast.backends.base import StorageBackend, StoredRecord
from pydantic_toast.cli import main
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL


def define_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: str, root_storage: str | None = None
) -> Any:
    """A module `gc_models_*` with Leaf, Branch (holds leaves) and Root (holds branches and a leaf)."""
    name = f"gc_models_{uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict

            class Leaf(ExternalBaseModel):
                text: str
                model_config = ExternalConfigDict(storage={storage!r})

            class Branch(ExternalBaseModel):
                leaves: list[Leaf]
                model_config = ExternalConfigDict(storage={storage!r})

            class Root(ExternalBaseModel):
                branches: list[Branch]
                best: Leaf | None = None
                model_config = ExternalConfigDict(storage={(root_storage or storage)!r})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


async def _backend(storage: str) -> StorageBackend:
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    return backend


def age(storage: str, models: list[Any], by: timedelta) -> None:
    """Move the records' timestamps back, as if they had been written `by` ago."""

    async def run() -> None:
        backend = await _backend(storage)
        try:
            keys = [(m.external_reference.id, type(m).__toast_settings__.storage_name) for m in models]
            records = await backend.load_records(keys)
            older = []
            for record in records:
                assert record is not None
                older.append(
                    StoredRecord(
                        record.id,
                        record.class_name,
                        record.payload,
                        record.schema_version,
                        record.created_at - by,
                        record.updated_at - by,
                        encoding=record.encoding,
                    )
                )
            await backend.save_records(older)
        finally:
            await backend.disconnect()

    asyncio.run(run())


def stored(model: Any) -> bool:
    try:
        type(model).model_validate(model.external_reference)
    except RecordNotFoundError:
        return False
    return True


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["gc", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_gc_reports_then_deletes_what_no_root_reaches(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = define_models(tmp_path, monkeypatch, storage_url)
    kept_leaf, replaced, orphan_leaf = m.Leaf(text="kept"), m.Leaf(text="replaced"), m.Leaf(text="orphan")
    root = m.Root(branches=[m.Branch(leaves=[kept_leaf])], best=replaced)
    root.model_dump()
    root.best = m.Leaf(text="new best")
    root.model_dump()  # the replaced leaf stays behind
    deleted_parent = m.Branch(leaves=[orphan_leaf])
    deleted_parent.model_dump()
    asyncio.run(deleted_parent.delete())  # without cascade: its leaf stays behind
    roots = f"{m.__name__}:Root"

    status, out, _ = gc(capsys, storage_url, "--roots", roots, "--grace", "0s")
    assert status == 0
    assert ": 6 records scanned" in out
    assert "kept: 1 of the root classes, 3 reached from them" in out
    assert "dry run: 2 unreachable records" in out
    assert "would be deleted; run again with --yes" in out
    assert stored(replaced)
    assert stored(orphan_leaf)

    # Within the grace period (default 1h) everything is young, so nothing is garbage.
    status, out, _ = gc(capsys, storage_url, "--roots", roots, "--yes")
    assert status == 0
    assert "deleted 0 unreachable records" in out
    assert stored(replaced)
    assert stored(orphan_leaf)

    status, out, _ = gc(capsys, storage_url, "--roots", roots, "--grace", "0s", "--yes")
    assert status == 0
    assert "deleted 2 unreachable records" in out
    assert not stored(replaced)
    assert not stored(orphan_leaf)
    assert m.Root.model_validate(root.external_reference) == root


def test_young_records_keep_what_they_point_at(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = define_models(tmp_path, monkeypatch, sqlite_url)
    old_leaf, lost_leaf = m.Leaf(text="old"), m.Leaf(text="lost")
    old_leaf.model_dump()
    lost_leaf.model_dump()
    age(sqlite_url, [old_leaf, lost_leaf], timedelta(hours=2))
    # A dump in progress: a new branch points at the old leaf (unchanged, so not rewritten), and
    # the root that will point at the branch is not written yet.
    fresh_branch = m.Branch(leaves=[old_leaf])
    fresh_branch.model_dump()

    status, out, _ = gc(capsys, sqlite_url, "--roots", f"{m.__name__}:Root", "--grace", "1h", "--yes")
    assert status == 0, out
    assert "1 written within the grace period (1h)" in out
    assert "deleted 1 unreachable records" in out
    assert stored(old_leaf)
    assert stored(fresh_branch)
    assert not stored(lost_leaf)


def test_roots_in_another_store_keep_their_children(
    memory_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = define_models(tmp_path, monkeypatch, memory_url, root_storage=sqlite_url)
    root = m.Root(branches=[m.Branch(leaves=[m.Leaf(text="a")])], best=m.Leaf(text="b"))
    root.model_dump()
    stray = m.Leaf(text="stray")
    stray.model_dump()

    status, out, _ = gc(capsys, memory_url, "--roots", f"{m.__name__}:Root", "--grace", "0s", "--yes")
    assert status == 0, out
    assert "deleted 1 unreachable records" in out
    assert not stored(stray)
    assert m.Root.model_validate(root.external_reference) == root


def test_records_of_undefined_classes_stop_the_deletion(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = define_models(tmp_path, monkeypatch, sqlite_url)
    orphan = m.Leaf(text="orphan")
    orphan.model_dump()
    stranger = asyncio.run(store_raw(sqlite_url, "Stranger", {"leaf": orphan.model_dump()}))
    roots = f"{m.__name__}:Root"

    status, out, _ = gc(capsys, sqlite_url, "--roots", roots, "--grace", "0s")
    assert status == 0
    assert "class 'Stranger' is not defined by the imported modules: 1 records" in out

    status, _, err = gc(capsys, sqlite_url, "--roots", roots, "--grace", "0s", "--yes")
    assert status == 2
    assert "found records of classes this process does not define: Stranger (1)" in err
    assert "deletes nothing" in err
    assert stored(orphan)
    assert asyncio.run(_exists(sqlite_url, stranger, "Stranger"))


async def _exists(storage: str, record_id: UUID, class_name: str) -> bool:
    backend = await _backend(storage)
    try:
        [record] = await backend.load_records([(record_id, class_name)])
    finally:
        await backend.disconnect()
    return record is not None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--grace", "soon"], "argument --grace: must be a number and a unit"),
        (["--yes", "--dry-run"], "not allowed with argument"),
        ([], "the following arguments are required: --roots"),
    ],
)
def test_gc_usage_errors(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    roots = [] if not arguments else ["--roots", "m:C"]
    with pytest.raises(SystemExit) as exited:
        main(["gc", "memory://gc-usage", *roots, *arguments])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_gc_never_creates_a_sqlite_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = define_models(tmp_path, monkeypatch, f"sqlite:///{tmp_path / 'models.db'}")
    missing = tmp_path / "typo.db"
    status, _, err = gc(capsys, f"sqlite:///{missing}", "--roots", f"{m.__name__}:Root")
    assert status == 1
    assert "no SQLite database" in err
    assert not missing.exists()


def test_live_records_of_undefined_classes_elsewhere_stop_the_deletion(
    memory_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = define_models(tmp_path, monkeypatch, memory_url, root_storage=sqlite_url)
    m.Root(branches=[]).model_dump()
    stray = m.Leaf(text="stray")
    stray.model_dump()
    age(memory_url, [stray], timedelta(hours=2))
    # Young, in the roots' store, of a class nobody here defines: it may point at the stray leaf.
    asyncio.run(store_raw(sqlite_url, "Alien", {"leaf": stray.model_dump()}))

    status, out, err = gc(capsys, memory_url, "--roots", f"{m.__name__}:Root", "--yes")
    assert status == 2, out
    assert "Alien (in sqlite:///" in err
    assert stored(stray)


def test_gc_follows_toast_values_and_collects_unreachable_ones(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"gc_toast_models_{uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from typing import Annotated
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict, Toast

            class Note(ExternalBaseModel):
                body: Annotated[str, Toast(storage={sqlite_url!r}, name="note_body")]
                model_config = ExternalConfigDict(storage={sqlite_url!r})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = importlib.import_module(name)
    note = m.Note(body="the first body")
    note.model_dump()
    note.body = "the second body"
    note.model_dump()  # the first body's record is no longer referred to

    status, out, _ = gc(capsys, sqlite_url, "--roots", f"{name}:Note", "--grace", "0s", "--yes")
    assert status == 0, out
    assert "deleted 1 unreachable records" in out
    assert m.Note.model_validate(note.external_reference) == note
