"""Content-addressed models: `ExternalConfigDict(content_addressed=True)`.

No `from __future__ import annotations`: the models below are defined in functions, around local URLs.
"""

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, cast
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

import pydantic_toast
from fixtures.traffic import edit_record, traffic
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    KeySet,
    RecordIntegrityError,
    StorageValidationError,
    Toast,
    upgrade,
)
from pydantic_toast._content_models import canonical
from pydantic_toast.cli import main


def leaf_model(storage: str, **config: Any) -> Any:
    class Tag(ExternalBaseModel):
        label: str
        weight: float = 1.0
        model_config = cast(ExternalConfigDict, {"storage": storage, "content_addressed": True, **config})

    return Tag


def test_equal_models_are_one_record_with_a_version_8_id(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    with traffic(storage_url) as writing:
        dumped = pydantic_toast.dump([tag(label="red"), tag(label="red"), tag(label="blue")])
    assert dumped[0] == dumped[1] != dumped[2]
    assert set(dumped[0]) == {"class_name", "id"}  # the contract's reference, unchanged
    assert UUID(dumped[0]["id"]).version == 8
    assert writing.written == 2
    assert tag(label="red").model_dump() == dumped[0]  # another instance, another dump: same id


def test_redumping_an_unchanged_model_writes_nothing(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    model = tag(label="red")
    reference = model.model_dump()
    with traffic(storage_url) as writing:
        assert model.model_dump() == reference
        assert tag(label="red").model_dump() == reference
    assert writing.written == 0
    assert writing.round_trips == 0


def test_a_loaded_model_dumped_again_writes_nothing(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    reference = tag(label="red").model_dump()
    pydantic_toast.Toast.forget_stored()  # as in another process
    loaded = tag.model_validate(reference)
    with traffic(storage_url) as writing:
        assert loaded.model_dump() == reference
    assert writing.written == 0


def test_a_changed_model_gets_a_new_id_and_the_old_record_stays(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    model = tag(label="red")
    first = model.model_dump()
    model.label = "green"
    second = model.model_dump()
    assert second != first
    assert model.external_reference is not None
    assert str(model.external_reference.id) == second["id"]
    assert tag.model_validate(first).label == "red"  # shared: other references may still need it
    assert tag.model_validate(second).label == "green"
    model.label = "red"
    assert model.model_dump() == first  # back to the old content: back to the old record


def test_save_always_writes(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    model = tag(label="red")
    model.model_dump()
    with traffic(storage_url) as writing:
        reference = asyncio.run(model.save())
    assert writing.written == 1  # an explicit save writes (and so refreshes a ttl)
    assert reference == model.external_reference


def test_types_round_trip_and_verify_on_every_backend(storage_url: str) -> None:
    """The data is checked on load against the id, however the store keeps JSON (PostgreSQL's jsonb
    reorders keys and writes numbers by their decimal value)."""

    class Reading(ExternalBaseModel):
        values: list[float]
        scores: dict[str, float]
        anything: dict[str, Any]
        at: datetime
        raw: bytes
        model_config = ExternalConfigDict(storage=storage_url, content_addressed=True)

    reading = Reading(
        values=[0.1, 1e16, 1.5e300, -2.5e-300, 1.0, 3.0e-7, float("inf")],
        scores={"zeta": 1.0, "alpha": 2.5, "mid": 1e22},
        anything={"z": [1e16, 1.5e300, 0.5, 12345678901234567890], "a": {"y": 1, "b": "é\n"}},
        at=datetime(2025, 12, 23, 10, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        raw=bytes(range(1, 256)),
    )
    reference = reading.model_dump()
    pydantic_toast.Toast.forget_stored()
    loaded = Reading.model_validate(reference)
    assert loaded.values == reading.values
    assert loaded.scores == reading.scores
    assert loaded.at == reading.at
    assert loaded.raw == reading.raw
    # Untyped numbers come back as the store keeps them (jsonb: 1e16 as an integer), equal in value.
    assert loaded.anything["a"] == reading.anything["a"]
    assert [float(number) for number in loaded.anything["z"]] == [float(n) for n in reading.anything["z"]]
    with traffic(storage_url) as writing:
        assert loaded.model_dump() == reference  # the loaded data hashes to the same id
    assert writing.written == 0


def test_with_compression(storage_url: str) -> None:
    plain, packed = (
        leaf_model(storage_url),
        leaf_model(storage_url, storage_name="PackedTag", compression="zlib"),
    )
    label = "a long label that compresses well " * 40
    reference = packed(label=label).model_dump()
    pydantic_toast.Toast.forget_stored()
    assert packed.model_validate(reference).label == label
    # Compression is not part of the content: the same data hashes alike (under its own name).
    assert plain(label=label).model_dump()["id"] != reference["id"]  # another storage name


def test_nested_models_of_both_kinds(storage_url: str) -> None:
    tag = leaf_model(storage_url)

    class Note(ExternalBaseModel):  # random ids
        text: str
        tags: list[tag]  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=storage_url)

    class Board(ExternalBaseModel):
        notes: list[Note]
        pinned: tag  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=storage_url, content_addressed=True)

    board = Board(notes=[Note(text="hi", tags=[tag(label="red")])], pinned=tag(label="red"))
    with traffic(storage_url) as writing:
        reference = board.model_dump()
    assert writing.written == 3  # board, note, and one red tag shared by both
    assert writing.round_trips == 1
    with traffic(storage_url) as writing:
        assert board.model_dump() == reference
    assert writing.written == 0
    pydantic_toast.Toast.forget_stored()
    loaded = Board.model_validate(reference)
    assert loaded == board
    # A nested non-content-addressed model is referenced by its own id: changing its data
    # rewrites it in place and leaves the board's id alone.
    board.notes[0].text = "hello"
    assert board.model_dump() == reference
    # A nested content-addressed model changes its parent's data, so its id too.
    board.pinned.label = "blue"  # type: ignore[attr-defined]
    assert board.model_dump() != reference


def test_a_chain_of_content_addressed_models_does_not_recurse(memory_url: str) -> None:
    """Each model's id depends on its child's, yet dumping never recurses per level."""

    class Link(ExternalBaseModel):
        depth: int
        next: "Link | None" = None
        model_config = ExternalConfigDict(storage=memory_url, content_addressed=True)

    chain = None
    for depth in range(2_000):  # deeper than Python's recursion limit
        chain = Link(depth=depth, next=chain)
    assert chain is not None
    with traffic(memory_url) as writing:
        reference = chain.model_dump()
    assert writing.written == 2_000
    assert writing.round_trips == 1
    with traffic(memory_url) as writing:
        assert chain.model_dump() == reference
    assert writing.written == 0
    loaded: Link | None = Link.model_validate(reference)
    depths = []
    while loaded is not None:
        depths.append(loaded.depth)
        loaded = loaded.next
    assert depths == list(range(1_999, -1, -1))


def test_content_addressed_models_inside_others_and_inside_toast_values(memory_url: str) -> None:
    tag = leaf_model(memory_url)

    class Shelf(ExternalBaseModel):
        tags: list[tag]  # type: ignore[valid-type]
        inner: "Shelf | None" = None
        model_config = ExternalConfigDict(storage=memory_url, content_addressed=True)

    class Message(BaseModel):
        shelf: Annotated[Shelf, Toast(storage=memory_url)]

    shared = tag(label="shared")
    shelf = Shelf(tags=[shared, tag(label="b"), shared], inner=Shelf(tags=[tag(label="shared")]))
    with traffic(memory_url) as writing:
        dumped = pydantic_toast.dump(Message(shelf=shelf))
    assert writing.written == 5  # the value, two shelves, two distinct tags
    assert Message.model_validate(dumped).shelf == shelf
    assert tag.model_validate(shared.model_dump()).label == "shared"


def test_a_long_chain_of_plain_models_under_a_content_addressed_one_does_not_recurse(memory_url: str) -> None:
    class Step(ExternalBaseModel):
        next: "Step | None" = None
        model_config = ExternalConfigDict(storage=memory_url)

    class Root(ExternalBaseModel):
        first: Step
        model_config = ExternalConfigDict(storage=memory_url, content_addressed=True)

    step = Step()
    for _ in range(2_000):  # deeper than Python's recursion limit
        step = Step(next=step)
    with traffic(memory_url) as writing:
        Root(first=step).model_dump()
    assert writing.written == 2_002


def test_a_model_that_contains_itself_is_refused(memory_url: str) -> None:
    class Loop(ExternalBaseModel):
        items: list[Any]
        model_config = ExternalConfigDict(storage=memory_url, content_addressed=True)

    class Holder(ExternalBaseModel):
        loop: Loop
        model_config = ExternalConfigDict(storage=memory_url)

    loop = Loop(items=[])
    loop.items.append(Holder(loop=loop))
    with pytest.raises(StorageValidationError, match="contains itself"):
        loop.model_dump()


def test_a_tampered_record_is_refused(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    reference = tag(label="the original").model_dump()
    record_id = UUID(reference["id"])
    forged = json.dumps({"label": "a forgery", "weight": 1.0}).encode()
    asyncio.run(
        edit_record(storage_url, reference["class_name"], record_id, lambda r: replace(r, payload=forged))
    )
    pydantic_toast.Toast.forget_stored()
    with pytest.raises(RecordIntegrityError) as caught:
        tag.model_validate(reference)
    assert caught.value.id == record_id
    assert "forgery" not in str(caught.value)
    assert caught.value.errors == [{"loc": (), "type": "content_hash"}]
    with pytest.raises(RecordIntegrityError):
        asyncio.run(tag.load(reference))


def test_a_tampered_nested_record_is_refused(memory_url: str) -> None:
    tag = leaf_model(memory_url)

    class Card(ExternalBaseModel):
        badge: tag  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=memory_url)

    card = Card(badge=tag(label="ok"))
    reference = card.model_dump()
    tag_id = card.badge.external_reference.id  # type: ignore[attr-defined]
    forged = b'{"label":"bad","weight":1.0}'
    asyncio.run(edit_record(memory_url, "Tag", tag_id, lambda r: replace(r, payload=forged)))
    pydantic_toast.Toast.forget_stored()
    with pytest.raises(RecordIntegrityError):
        Card.model_validate(reference)


def test_canonical_form_ignores_what_stores_change() -> None:
    written = b'{"b":[1e16,1.5e300,0.1,-0.0],"a":{"y":1,"x":"\\u00e9"}}'
    as_jsonb = b'{"a": {"x": "\xc3\xa9", "y": 1}, "b": [10000000000000000, 15' + b"0" * 299 + b", 0.1, 0]}"
    assert canonical(written) == canonical(as_jsonb)
    assert canonical(b'{"a":1}') != canonical(b'{"a":"1"}')
    assert canonical(b"[12345678901234567890]") != canonical(b"[12345678901234567891]")


def test_offload_threshold_composes(storage_url: str) -> None:
    tag = leaf_model(storage_url, offload_threshold=64)

    class Box(ExternalBaseModel):
        badge: tag  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=storage_url)

    with traffic(storage_url) as writing:
        small = tag(label="s").model_dump()
    assert small == {"label": "s", "weight": 1.0}  # inline: nothing stored
    assert writing.written == 0
    big = tag(label="x" * 100)
    reference = big.model_dump()
    assert set(reference) == {"class_name", "id"}
    assert UUID(reference["id"]).version == 8
    assert tag(label="x" * 100).model_dump() == reference
    box = Box(badge=big)
    loaded = Box.model_validate(box.model_dump())
    assert loaded.badge.label == "x" * 100  # type: ignore[attr-defined]


def test_with_a_ttl_every_dump_writes(memory_url: str) -> None:
    tag = leaf_model(memory_url, ttl=timedelta(hours=1))
    model = tag(label="red")
    reference = model.model_dump()
    with traffic(memory_url) as writing:
        assert model.model_dump() == reference
    # A shared record may have expired meanwhile: each dump writes it, refreshing its expiry.
    assert writing.written == 1


async def test_cascade_delete_leaves_content_addressed_records(storage_url: str) -> None:
    tag = leaf_model(storage_url)

    class Post(ExternalBaseModel):
        badge: tag  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=storage_url)

    first, second = Post(badge=tag(label="news")), Post(badge=tag(label="news"))
    await pydantic_toast.adump([first, second])
    assert await first.delete(cascade=True)
    loaded = await Post.load(second.external_reference)  # type: ignore[arg-type]
    assert loaded.badge.label == "news"  # type: ignore[attr-defined]


async def test_deleting_a_content_addressed_record_makes_the_next_dump_write_it(storage_url: str) -> None:
    tag = leaf_model(storage_url)
    model = tag(label="gone")
    reference = model.model_dump()
    assert await tag.delete(reference)
    with traffic(storage_url) as writing:
        assert tag(label="gone").model_dump() == reference
    assert writing.written == 1
    assert (await tag.load(reference)).label == "gone"


def test_refused_combinations(memory_url: str) -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"optimistic_concurrency": True}, "optimistic_concurrency"),
        ({"upgrade_write_back": True}, "upgrade_write_back"),
        ({"encryption": KeySet({"k1": b"k" * 32})}, "encryption"),
    ]
    for config, words in refused:
        with pytest.raises(StorageValidationError, match=words):
            leaf_model(memory_url, **config)
    with pytest.raises(StorageValidationError, match="content_addressed must be True or False"):

        class Bad(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=memory_url, content_addressed="yes")  # type: ignore[typeddict-item]


def test_schema_version_is_part_of_the_id(memory_url: str) -> None:
    first = leaf_model(memory_url, storage_name="V1Tag").model_validate({"label": "a"}).model_dump()
    second = leaf_model(memory_url, storage_name="V2Tag", schema_version=2)
    assert UUID(first["id"]) != UUID(second(label="a").model_dump()["id"])


def test_created_at_is_the_first_dump_of_that_content(memory_url: str) -> None:
    tag = leaf_model(memory_url)
    before = datetime.now(UTC)
    model = tag(label="t")
    model.model_dump()
    record = asyncio.run(_record(memory_url, model))
    assert record.created_at >= before - timedelta(seconds=1)


async def _record(url: str, model: ExternalBaseModel) -> Any:
    from pydantic_toast.registry import backend_class
    from pydantic_toast.url import StorageURL

    backend = backend_class(StorageURL.parse(url).scheme)(url)
    await backend.connect()
    try:
        reference = model.external_reference
        assert reference is not None
        [record] = await backend.load_records([(reference.id, reference.class_name)])
        return record
    finally:
        await backend.disconnect()


def test_an_older_record_is_checked_before_its_upgrade(storage_url: str) -> None:
    def version(number: int) -> Any:
        class Profile(ExternalBaseModel):  # the same class, as two deployments define it
            if number == 1:
                name: str
            else:
                full_name: str

                @upgrade(from_version=1)
                def _rename(data: dict[str, Any]) -> dict[str, Any]:
                    data["full_name"] = data.pop("name")
                    return data

            model_config = ExternalConfigDict(
                storage=storage_url, content_addressed=True, schema_version=number
            )

        return Profile

    old = version(1)(name="Ada").model_dump()
    current = version(2)
    loaded = current.model_validate(old)
    assert loaded.full_name == "Ada"
    assert loaded.model_dump() != old  # version 2 data: another record; the old one stays
    forged = b'{"name":"Eve"}'
    record_id = UUID(old["id"])
    asyncio.run(edit_record(storage_url, old["class_name"], record_id, lambda r: replace(r, payload=forged)))
    pydantic_toast.Toast.forget_stored()
    with pytest.raises(RecordIntegrityError):
        current.model_validate(old)


def test_the_upgrade_command_refuses_content_addressed_models(
    memory_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = f"ca_models_{uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict\n\n"
        "class Tag(ExternalBaseModel):\n"
        "    label: str\n"
        f"    model_config = ExternalConfigDict(storage={memory_url!r}, content_addressed=True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["upgrade", memory_url, "--model", f"{module}:Tag"]) != 0
    assert "never rewritten in place" in capsys.readouterr().err
