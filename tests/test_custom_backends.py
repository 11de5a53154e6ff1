"""Custom backends: the four-method contract, registration rules, entry points."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageBackend,
    StorageValidationError,
    UnsupportedOperationError,
    register_backend,
    registry,
)


class FileBackend(StorageBackend):
    """Written exactly as the contract's example: four methods, nothing more."""

    def __init__(self, url: str) -> None:
        self.directory = Path(urlsplit(url).path)

    async def connect(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    async def disconnect(self) -> None:
        pass

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        (self.directory / f"{class_name}-{id}.json").write_text(json.dumps(data))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        path = self.directory / f"{class_name}-{id}.json"
        if not path.exists():
            return None
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded


register_backend("file", FileBackend)


def test_contract_backend_round_trips_sync_and_async(tmp_path: Path) -> None:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"file://{tmp_path}")

    note = Note(text="hello")
    reference = note.model_dump()

    envelope = json.loads((tmp_path / f"Note-{reference['id']}.json").read_text())
    assert envelope["data"] == {"text": "hello"}
    assert envelope["schema_version"] == 1
    assert envelope["created_at"].endswith("Z")
    assert Note.model_validate(reference) == note

    note.text = "again"
    assert note.model_dump() == reference
    envelope_after = json.loads((tmp_path / f"Note-{reference['id']}.json").read_text())
    assert envelope_after["created_at"] == envelope["created_at"]
    assert Note.model_validate(reference).text == "again"


async def test_contract_backend_gets_default_batches_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    backend = FileBackend(f"file://{tmp_path}")
    await backend.connect()
    missing = await backend.load_records([(uuid4(), "Note")])
    assert missing == [None]
    with pytest.raises(UnsupportedOperationError, match="does not support delete"):
        await backend.delete(uuid4(), "Note")

    class Expiring(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"file://{tmp_path}", ttl=timedelta(minutes=1))

    with pytest.raises(UnsupportedOperationError, match="cannot expire records"):
        await Expiring(text="x").save()


def test_registering_a_class_missing_methods_lists_them() -> None:
    class Half:
        async def connect(self) -> None:
            pass

        def save(self) -> None:  # not async: does not count
            pass

    with pytest.raises(StorageValidationError) as caught:
        register_backend("half", Half)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "disconnect, save, load" in message
    assert caught.value.actual == ["disconnect", "save", "load"]


def test_abstract_subclass_is_refused_with_missing_names() -> None:
    class Partial(StorageBackend):
        async def connect(self) -> None:
            pass

        async def disconnect(self) -> None:
            pass

    with pytest.raises(StorageValidationError, match="save, load"):
        register_backend("partial", Partial)  # type: ignore[type-abstract]


def test_taking_over_a_scheme_needs_replace() -> None:
    class Other(FileBackend):
        pass

    with pytest.raises(StorageValidationError, match="replace=True"):
        register_backend("file", Other)
    with pytest.raises(StorageValidationError, match="replace=True"):
        register_backend("sqlite", Other)
    register_backend("file", FileBackend)  # same class again: a no-op
    register_backend("file-2", Other)
    register_backend("file-2", FileBackend, replace=True)
    assert registry.registered_backends["file-2"] is FileBackend


@pytest.mark.parametrize("scheme", ["", "File", "1abc", "a b", "a/b"])
def test_invalid_schemes_are_refused(scheme: str) -> None:
    with pytest.raises(StorageValidationError, match="not a valid URL scheme"):
        register_backend(scheme, FileBackend)


def test_entry_point_backends_are_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toast_plugin_example.py").write_text(
        "from test_custom_backends import FileBackend as PluginBackend\n"
    )
    dist = tmp_path / "toast_plugin_example-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toast-plugin-example\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[pydantic_toast.backends]\nplugfile = toast_plugin_example:PluginBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "toast_plugin_example", raising=False)

    assert "plugfile" in registry.known_schemes()

    class Plugged(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"plugfile://{tmp_path / 'store'}")

    try:
        assert Plugged.model_validate(Plugged(text="via entry point").model_dump()).text == "via entry point"
    finally:
        registry._registered.pop("plugfile", None)
