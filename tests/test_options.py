"""URL options are declared once per backend (a `BackendOptions` model); the docs' tables match it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from pydantic import Field

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError, register_backend
from pydantic_toast.backends import BackendOptions, Flag, Identifier, StorageBackend, secret
from pydantic_toast.backends.memory import MemoryOptions
from pydantic_toast.backends.objectstore._config import AzureOptions, FileOptions, GCSOptions, S3Options
from pydantic_toast.backends.postgresql import PostgreSQLOptions
from pydantic_toast.backends.redis import (
    RedisClusterOptions,
    RedisClusterTLSOptions,
    RedisOptions,
    RedisTLSOptions,
)
from pydantic_toast.backends.sqlite import SQLiteOptions
from pydantic_toast.url import StorageURL

DOCS = Path(__file__).resolve().parent.parent / "docs" / "backends"
BACKEND_OPTIONS: dict[str, list[type[BackendOptions]]] = {
    "sqlite.md": [SQLiteOptions],
    "postgresql.md": [PostgreSQLOptions],
    "redis.md": [RedisOptions, RedisTLSOptions, RedisClusterOptions, RedisClusterTLSOptions],
    "s3.md": [S3Options],
    "file.md": [FileOptions],
    "azure.md": [AzureOptions],
    "gcs.md": [GCSOptions],
}
_ROW = re.compile(r"^\|(?P<cells>.*)\|\s*$")


def _option_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every Markdown table whose first column is `option` or `parameter`."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _ROW.match(line)
        previous = lines[index - 1] if index else ""
        if match is None or _ROW.match(previous):
            continue
        header = [cell.strip() for cell in match["cells"].split("|")]
        if header[0] not in ("option", "parameter"):
            continue
        rows = []
        for row in lines[index + 2 :]:
            found = _ROW.match(row)
            if found is None:
                break
            rows.append([cell.strip() for cell in found["cells"].split("|")])
        tables.append((header, rows))
    return tables


def _documented_default(value: Any) -> str | None:
    if value is None or value == ():
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@pytest.mark.parametrize("page", sorted(BACKEND_OPTIONS))
def test_the_docs_list_exactly_the_declared_options_and_their_defaults(page: str) -> None:
    fields = {name: field for model in BACKEND_OPTIONS[page] for name, field in model.option_fields().items()}
    documented: dict[str, str | None] = {}  # name -> its default cell (None: the table has no default column)
    for header, rows in _option_tables((DOCS / page).read_text()):
        for row in rows:
            for name in re.findall(r"`([^`]+)`", row[0]):
                assert name not in documented, f"{page} lists {name!r} twice"
                documented[name] = row[header.index("default")] if "default" in header else None
    assert sorted(documented) == sorted(fields), page
    for name, cell in documented.items():
        default = _documented_default(fields[name].default)
        if cell is None:
            assert default is None, f"{page}: {name} has a default ({default}) but no default column"
        elif default is not None:
            assert cell.startswith(f"`{default}`"), f"{page}: {name} documents {cell!r}, declared {default!r}"
        assert fields[name].description, f"{name} needs a description"


def test_every_builtin_backend_declares_its_options_model() -> None:
    from pydantic_toast.registry import backend_class

    for scheme, model in [
        ("memory", MemoryOptions),
        ("sqlite", SQLiteOptions),
        ("postgresql", PostgreSQLOptions),
        ("redis", RedisOptions),
        ("redis+cluster", RedisClusterOptions),
    ]:
        assert backend_class(scheme).options_model is model


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("busy_timeout=inf", "must be a number >= 0"),
        ("busy_timeout=nan", "must be a number >= 0"),
        ("busy_timeout=", "busy_timeout=''"),
        ("table=", "not a plain identifier"),
    ],
)
def test_numbers_refuse_inf_nan_and_empty_values(query: str, fragment: str) -> None:
    with pytest.raises(StorageValidationError) as caught:
        SQLiteOptions.from_url(StorageURL.parse(f"sqlite:///x.db?{query}"))
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("Yes", True), ("on", True), ("OFF", False), ("0", False)]
)
def test_flags_accept_the_usual_spellings(raw: str, value: bool) -> None:
    options = RedisTLSOptions.from_url(StorageURL.parse(f"rediss://h/0?ssl_check_hostname={raw}"))
    assert options.ssl_check_hostname is value


@pytest.mark.parametrize("raw", ["t", "y", "maybe", "2"])
def test_flags_refuse_guesses(raw: str) -> None:
    with pytest.raises(StorageValidationError, match=r"ssl_check_hostname=.* must be true or false"):
        RedisTLSOptions.from_url(StorageURL.parse(f"rediss://h/0?ssl_check_hostname={raw}"))


def test_a_repeatable_option_collects_every_occurrence() -> None:
    url = StorageURL.parse("redis+cluster://a:1?node=b:2&node=c:3,d:4")
    assert RedisClusterOptions.from_url(url).node == ("b:2", "c:3,d:4")


def test_options_are_frozen_and_typed() -> None:
    options = PostgreSQLOptions.from_url(StorageURL.parse("postgresql://h/db?max_size=3&command_timeout=2.5"))
    assert (options.max_size, options.command_timeout, options.table) == (3, 2.5, "external_models")
    with pytest.raises(ValueError, match="frozen"):
        options.max_size = 4  # type: ignore[misc]


def test_a_secret_option_is_never_echoed_even_when_invalid() -> None:
    class VaultOptions(BackendOptions):
        backend = "vault"
        token: int | None = Field(None, description="numeric token", json_schema_extra=secret())

    with pytest.raises(StorageValidationError) as caught:
        VaultOptions.from_url(StorageURL.parse("vault://h?token=s3cret-sentinel"))
    said = [str(caught.value), repr(caught.value.actual), repr(caught.value.expected), repr(caught.value)]
    assert not [text for text in said if "s3cret-sentinel" in text]
    assert "token='***'" in str(caught.value)


class ShelfOptions(BackendOptions):
    """A third-party backend's options, declared the documented way."""

    backend = "shelf"
    table: Identifier = Field("shelf", description="table name")
    compact: Flag = Field(False, description="compact the store on disconnect")


class ShelfBackend:
    """A four-method backend that subclasses nothing and declares its options."""

    options_model = ShelfOptions
    _data: ClassVar[dict[UUID, dict[str, Any]]] = {}

    def __init__(self, url: str) -> None:
        self.options = ShelfOptions.from_url(StorageURL.parse(url))

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        self._data[id] = data

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return self._data.get(id)


def test_a_third_party_options_model_is_checked_at_class_definition() -> None:
    register_backend("optionshelf", ShelfBackend)  # type: ignore[arg-type]
    with pytest.raises(StorageValidationError, match=r"unknown shelf option\(s\) \['colour'\]"):

        class Refused(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(
                storage="optionshelf://x?colour=blue", storage_name=f"R{uuid4().hex}"
            )

    class Kept(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(
            storage="optionshelf://x?compact=yes", storage_name=f"K{uuid4().hex}"
        )

    assert Kept.model_validate(Kept(x=3).model_dump()).x == 3


def test_the_storage_backend_base_validates_with_its_options_model() -> None:
    class Declared(StorageBackend):
        options_model = ShelfOptions

    with pytest.raises(StorageValidationError, match="must be true or false"):
        Declared.check_url(StorageURL.parse("shelf://x?compact=perhaps"))
    Declared.check_url(StorageURL.parse("shelf://x?compact=1"))
