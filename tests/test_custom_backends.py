"""Custom backends: the four-method contract, registration rules, entry points."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import UUID

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageBackend,
    StorageValidationError,
    register_backend,
    registry,
)
from pydantic_toast.backends.base import Capability
from pydantic_toast.cli import main


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


register_backend("jsondir", FileBackend)


def test_contract_backend_round_trips_sync_and_async(tmp_path: Path) -> None:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=f"jsondir://{tmp_path}")

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


class DuckBackend:
    """No base class: four contract methods, plus a delete and a declared capability."""

    declared_capabilities = frozenset({"unique_ids"})
    records: ClassVar[dict[tuple[UUID, str], dict[str, Any]]] = {}

    def __init__(self, url: str) -> None:
        self.url = url

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        self.records[(id, class_name)] = data

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return self.records.get((id, class_name))

    async def delete(self, id: UUID, class_name: str) -> bool:
        return self.records.pop((id, class_name), None) is not None


def test_a_class_without_base_is_wrapped_and_its_extras_are_forwarded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    register_backend("duck", DuckBackend)  # type: ignore[arg-type]
    register_backend("duck", DuckBackend)  # type: ignore[arg-type]  # the same class again: a no-op
    wrapper = registry.registered_backends["duck"]
    assert issubclass(wrapper, StorageBackend)
    assert wrapper.__name__ == "DuckBackend"
    assert wrapper.capabilities() == {Capability.DELETE, Capability.UNIQUE_IDS}
    assert not wrapper.supports("scan")

    class Duck(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage="duck://pond")

    # Before the wrapper, the first dump failed with AttributeError: no attribute 'save_records'.
    duck = Duck(text="quack")
    reference = duck.model_dump()
    assert Duck.model_validate(reference) == duck

    async def remove() -> bool:
        return await Duck.delete(reference["id"])

    assert asyncio.run(remove()) is True

    # The command line refuses before connecting, naming the method to write.
    assert main(["stats", "duck://pond"]) == 1
    assert "implement 'async def scan_records" in capsys.readouterr().err


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
        register_backend("jsondir", Other)
    with pytest.raises(StorageValidationError, match="replace=True"):
        register_backend("sqlite", Other)
    register_backend("jsondir", FileBackend)  # same class again: a no-op
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
