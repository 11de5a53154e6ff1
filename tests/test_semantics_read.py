"""What validating and loading mean: deep trees, look-alike data, unions, flags, context, validators."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import pytest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fixtures.stored import store_records
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalReference, StoredDataError


@pytest.fixture(params=["memory", "sqlite"])
def local_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


# --------------------------------------------------------------------------- deep trees


def message_model(storage: str) -> Any:
    class Message(ExternalBaseModel):
        n: int
        previous: Message | None = None
        model_config = ExternalConfigDict(storage=storage)

    Message.model_rebuild()
    return Message


def chain_length(message: Any) -> int:
    length = 0
    while message is not None:
        length += 1
        message = message.previous
    return length


async def test_a_500_deep_chain_loads_sync_and_async(local_url: str) -> None:
    message = message_model(local_url)
    ids = [uuid4() for _ in range(500)]
    records: list[tuple[UUID, str, Any]] = [(ids[0], "Message", {"n": 0, "previous": None})]
    records += [
        (ids[n], "Message", {"n": n, "previous": {"class_name": "Message", "id": str(ids[n - 1])}})
        for n in range(1, 500)
    ]
    await store_records(local_url, records)
    reference = {"class_name": "Message", "id": str(ids[-1])}

    loaded = await message.load(reference)
    assert chain_length(loaded) == 500
    assert (loaded.n, loaded.previous.n) == (499, 498)
    assert chain_length(message.model_validate(reference)) == 500
    assert chain_length(message.model_validate_json(json.dumps(reference))) == 500

    class Thread(BaseModel):
        last: message  # type: ignore[valid-type]

    assert chain_length(Thread.model_validate({"last": reference}).last) == 500
    assert chain_length((await message.load_many([reference, ids[250]]))[1]) == 251


def numbers(message: Any) -> list[int]:
    found = []
    while message is not None:
        found.append(message.n)
        message = message.previous
    return found


@pytest.mark.parametrize("length", [160, 200])
async def test_what_dumps_loads(local_url: str, length: int) -> None:
    # The depths at which loading a dumped chain once hit RecursionError (160 on 3.11, 200 on 3.13).
    message = message_model(local_url)
    chain = None
    for n in range(length):
        chain = message(n=n, previous=chain)
    assert chain is not None
    reference = chain.model_dump()
    loaded = message.model_validate(reference)
    assert loaded is not chain  # read back from the store, not handed the instance
    assert loaded == chain
    assert chain_length(loaded) == length
    assert await message.load(reference) == chain


async def test_chains_deeper_than_plain_pydantic_serializes_dump_and_load(local_url: str) -> None:
    # Plain pydantic gives up serializing about 300 nested models; nested external models are
    # serialized one after another, so their depth is not Python's recursion depth.
    message = message_model(local_url)
    chain = None
    for n in range(1000):
        chain = message(n=n, previous=chain)
    assert chain is not None
    expected = list(range(999, -1, -1))
    reference = chain.model_dump()
    assert numbers(message.model_validate(reference)) == expected
    assert numbers(await message.load(await chain.save())) == expected
    assert chain.model_dump() == reference  # unchanged: the same record, nothing written


async def test_a_stored_reference_cycle_is_refused(local_url: str) -> None:
    message = message_model(local_url)
    first, second = uuid4(), uuid4()
    await store_records(
        local_url,
        [
            (first, "Message", {"n": 1, "previous": {"class_name": "Message", "id": str(second)}}),
            (second, "Message", {"n": 2, "previous": {"class_name": "Message", "id": str(first)}}),
        ],
    )
    with pytest.raises(StoredDataError, match="refers to itself through its references"):
        message.model_validate({"class_name": "Message", "id": str(first)})
    with pytest.raises(StoredDataError, match="refers to itself"):
        await message.load(second)


async def test_a_record_shared_by_two_parents_loads_as_one_instance(local_url: str) -> None:
    message = message_model(local_url)
    root = message(n=0)

    class Pair(ExternalBaseModel):
        left: message  # type: ignore[valid-type]
        right: message  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=local_url)

    pair: Any = await Pair.load(
        await Pair(left=message(n=1, previous=root), right=message(n=2, previous=root)).save()
    )
    assert pair.left.previous == pair.right.previous == root
    assert pair.left.previous is pair.right.previous


# --------------------------------------------------------------------------- a field named class_name


def classroom_model(storage: str) -> Any:
    class Classroom(ExternalBaseModel):
        class_name: str
        teacher: str
        model_config = ExternalConfigDict(storage=storage)

    return Classroom


async def test_a_model_with_a_class_name_field_round_trips(local_url: str) -> None:
    classroom = classroom_model(local_url)
    room = classroom(class_name="5b", teacher="Ada")
    reference = room.model_dump()
    assert set(reference) == {"class_name", "id"}
    assert classroom.model_validate(reference) == room
    assert classroom.model_validate_json(json.dumps(reference)) == room
    assert await classroom.load(reference) == room

    class School(BaseModel):
        rooms: list[classroom]  # type: ignore[valid-type]

    school = School(rooms=[room, classroom(class_name="6a", teacher="Bob")])
    assert School.model_validate(school.model_dump()) == school
    assert School.model_validate_json(school.model_dump_json()) == school


def test_data_of_a_model_with_a_class_name_field_is_not_taken_for_a_reference(local_url: str) -> None:
    classroom = classroom_model(local_url)

    class Both(ExternalBaseModel):
        class_name: str
        id: str
        model_config = ExternalConfigDict(storage=local_url)

    # Not the storage name, not a UUID, a third key: data, validated as such.
    assert classroom.model_validate({"class_name": "5b", "teacher": "Ada"}).class_name == "5b"
    assert Both.model_validate({"class_name": "5b", "id": str(uuid4())}).class_name == "5b"
    assert Both.model_validate({"class_name": "Both", "id": "7"}).id == "7"
    with pytest.raises(ValidationError, match="teacher"):
        classroom.model_validate({"class_name": "Classroom", "id": "not-a-uuid"})
    # Exactly the two keys, a UUID and the storage name: a reference (documented).
    with pytest.raises(Exception, match="no stored Both record"):
        Both.model_validate({"class_name": "Both", "id": str(uuid4())})
    with pytest.raises(Exception, match="no stored Classroom record"):
        classroom.model_validate(ExternalReference(class_name="Classroom", id=uuid4()))


# --------------------------------------------------------------------------- discriminated unions


def pet_models(storage: str) -> Any:
    class Cat(ExternalBaseModel):
        kind: Literal["cat"] = "cat"
        lives: int = 9
        model_config = ExternalConfigDict(storage=storage)

    class Dog(ExternalBaseModel):
        kind: Literal["dog"] = "dog"
        name: str = "Rex"
        model_config = ExternalConfigDict(storage=storage)

    class Puppy(Dog):
        age_weeks: int = 8

    return Cat, Dog, Puppy


def test_a_discriminated_union_of_external_models_round_trips(local_url: str) -> None:
    cat, dog, puppy = pet_models(local_url)
    pet: Any = Annotated[cat | dog, Field(discriminator="kind")]

    class Home(BaseModel):
        pet: pet
        pets: list[pet] = Field(default_factory=list)
        maybe: pet | None = None

    home = Home(pet=dog(), pets=[cat(lives=3), dog(name="Ace"), puppy(age_weeks=3)], maybe=cat())
    dumped = home.model_dump()
    assert dumped["pet"]["class_name"] == "Dog"
    assert Home.model_validate(dumped) == home
    assert Home.model_validate_json(home.model_dump_json()) == home
    assert type(Home.model_validate(dumped).pets[2]) is puppy

    adapter = TypeAdapter(list[pet])
    assert adapter.validate_python(adapter.dump_python(home.pets)) == home.pets
    assert adapter.validate_json(adapter.dump_json(home.pets)) == home.pets
    # Data still goes by its tag, a reference object by its class name.
    assert Home.model_validate({"pet": {"kind": "cat", "lives": 2}}).pet == cat(lives=2)
    reference = ExternalReference(class_name="Dog", id=UUID(dumped["pet"]["id"]))
    assert Home.model_validate({"pet": reference}).pet == dog()
    with pytest.raises(ValidationError, match="union_tag_invalid"):
        Home.model_validate({"pet": {"class_name": "Bird", "id": str(uuid4())}})


def test_a_storage_name_equal_to_another_choices_tag_is_refused(local_url: str) -> None:
    class Cat(ExternalBaseModel):
        kind: Literal["cat", "Dog"] = "cat"
        model_config = ExternalConfigDict(storage=local_url)

    class Dog(ExternalBaseModel):
        kind: Literal["dog"] = "dog"
        model_config = ExternalConfigDict(storage=local_url)

    with pytest.raises(Exception, match="storage name 'Dog' is also the discriminator value"):

        class Home(BaseModel):
            pet: Annotated[Cat | Dog, Field(discriminator="kind")]


# --------------------------------------------------------------------------- call-time flags, JSON


def flagged_models(storage: str) -> tuple[Any, Any]:
    class Part(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=storage)

    class Machine(ExternalBaseModel):
        n: int
        label: str = Field(alias="Label")
        part: Part | None = None
        made: datetime | None = None
        model_config = ExternalConfigDict(storage=storage)

    return Machine, Part


class PlainPart(BaseModel):
    n: int


class PlainMachine(BaseModel):
    n: int
    label: str = Field(alias="Label")
    part: PlainPart | None = None
    made: datetime | None = None


def outcome(call: Any) -> Any:
    try:
        result = call()
    except ValidationError as exc:
        return sorted((error["loc"], error["type"]) for error in exc.errors())
    return result.model_dump(context={"pydantic_toast": "inline"})


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ('{"n": "1", "Label": "a"}', {"strict": True}),
        ('{"n": 1, "Label": "a", "made": "2025-01-02T03:04:05Z"}', {"strict": True}),
        ('{"n": 1, "Label": "a", "part": {"n": "2"}}', {"strict": True}),
        # Errors in the model's own field and its external sibling: both reported.
        ('{"n": "1", "Label": "a", "part": {"n": "2"}}', {"strict": True}),
        ('{"n": 1, "Label": "a", "x": 1}', {"extra": "forbid"}),
        ('{"n": 1, "Label": "a", "part": {"n": 2, "x": 1}}', {"extra": "forbid"}),
        ('{"n": 1, "label": "a"}', {"by_alias": False, "by_name": True}),
        ('{"n": 1, "Label": "a"}', {"by_alias": False, "by_name": True}),
        ('{"n": 1, "label": "a"}', {"by_name": True}),
        ('{"n": "1", "Label": "a"}', {}),
    ],
)
def test_model_validate_json_honours_call_time_flags_like_plain_pydantic(
    memory_url: str, text: str, flags: dict[str, Any]
) -> None:
    machine, _ = flagged_models(memory_url)
    expected = outcome(lambda: PlainMachine.model_validate_json(text, **flags))
    assert outcome(lambda: machine.model_validate_json(text, **flags)) == expected
    assert outcome(lambda: machine.model_validate(json.loads(text), **flags)) == outcome(
        lambda: PlainMachine.model_validate(json.loads(text), **flags)
    )


def test_call_time_flags_do_not_apply_to_stored_data(memory_url: str) -> None:
    machine, part = flagged_models(memory_url)
    stored = machine(n=1, Label="a", part=part(n=2)).model_dump()
    # Stored data is written by field name; strict and by-alias-only reading still load it.
    assert machine.model_validate_json(json.dumps(stored), strict=True, by_alias=True, by_name=False).n == 1


# --------------------------------------------------------------------------- context and validators


def audited_models(storage: str, calls: list[tuple[str, Any]]) -> tuple[Any, Any]:
    class Leaf(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=storage)

        @field_validator("value")
        @classmethod
        def _field(cls, value: int, info: ValidationInfo) -> int:
            calls.append(("Leaf.field", info.context))
            return value

        @model_validator(mode="after")
        def _after(self, info: ValidationInfo) -> Any:
            calls.append(("Leaf.after", info.context))
            return self

    class Tree(ExternalBaseModel):
        name: str
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=storage)

        @model_validator(mode="after")
        def _after(self, info: ValidationInfo) -> Any:
            calls.append(("Tree.after", info.context))
            return self

        @field_validator("leaves")
        @classmethod
        def _only_built_leaves(cls, leaves: list[Leaf]) -> list[Leaf]:
            # A model still being loaded is never handed to a validator as a placeholder.
            assert all(isinstance(leaf, Leaf) for leaf in leaves)
            return leaves

    return Tree, Leaf


async def test_context_reaches_validators_of_every_loaded_model(local_url: str) -> None:
    calls: list[tuple[str, Any]] = []
    tree, leaf = audited_models(local_url, calls)
    leaf_reference = leaf(value=1).model_dump()
    tree_reference = tree(name="t", leaves=[leaf(value=2), leaf(value=3)]).model_dump()
    context = {"tenant": "acme"}

    loads: list[Callable[[], Any]] = [
        lambda: leaf.model_validate(leaf_reference, context=context),
        lambda: leaf.model_validate_json(json.dumps(leaf_reference), context=context),
    ]
    for load in loads:
        calls.clear()
        load()
        assert calls == [("Leaf.field", context), ("Leaf.after", context)]
    calls.clear()
    await leaf.load(leaf_reference, context=context)
    assert calls == [("Leaf.field", context), ("Leaf.after", context)]
    calls.clear()
    first, again = await leaf.load_many([leaf_reference, leaf_reference], context=context)
    assert calls == [("Leaf.field", context), ("Leaf.after", context)]  # one record, one model
    assert first is again

    calls.clear()
    tree.model_validate(tree_reference, context=context)
    assert sorted(calls, key=str) == sorted(
        [("Leaf.field", context)] * 2 + [("Leaf.after", context)] * 2 + [("Tree.after", context)], key=str
    )
    calls.clear()
    await tree.load(tree_reference, context=context)
    assert [seen for _, seen in calls] == [context] * 5


def test_validators_run_once_per_load(local_url: str) -> None:
    calls: list[tuple[str, Any]] = []
    tree, leaf = audited_models(local_url, calls)
    reference = leaf(value=1).model_dump()
    calls.clear()
    leaf.model_validate(reference)
    assert [name for name, _ in calls] == ["Leaf.field", "Leaf.after"]

    tree_reference = tree(name="t", leaves=[leaf(value=2)]).model_dump()
    calls.clear()
    tree.model_validate(tree_reference)
    assert sorted(name for name, _ in calls) == ["Leaf.after", "Leaf.field", "Tree.after"]

    class Forest(BaseModel):
        trees: list[tree]  # type: ignore[valid-type]

    calls.clear()
    Forest.model_validate({"trees": [tree_reference]})
    assert sorted(name for name, _ in calls) == ["Leaf.after", "Leaf.field", "Tree.after"]


def test_a_before_validator_sees_stored_data_and_a_wrap_validator_sees_the_reference(
    memory_url: str,
) -> None:
    seen: list[Any] = []

    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=memory_url)

        @model_validator(mode="before")
        @classmethod
        def _before(cls, data: Any) -> Any:
            seen.append(("before", dict(data)))
            return data

        @model_validator(mode="wrap")
        @classmethod
        def _wrap(cls, data: Any, handler: Any) -> Any:
            seen.append(("wrap", data))
            return handler(data)

    reference = Note(text="hi").model_dump()
    seen.clear()
    assert Note.model_validate(reference).text == "hi"
    assert seen == [("wrap", reference), ("before", {"text": "hi"})]


def test_a_subclass_through_a_base_field_runs_its_own_validators(memory_url: str) -> None:
    calls: list[str] = []

    class Shape(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)

    class Square(Shape):
        side: int

        @model_validator(mode="after")
        def _after(self) -> Any:
            calls.append("Square.after")
            return self

    class Drawing(BaseModel):
        shape: Shape

    reference = Square(side=2).model_dump()
    calls.clear()
    loaded = Drawing.model_validate({"shape": reference})
    assert isinstance(loaded.shape, Square)
    assert calls == ["Square.after"]


def test_nested_json_data_follows_each_models_own_config_like_plain_pydantic(memory_url: str) -> None:
    class Item(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=memory_url, extra="forbid")

    class PlainItem(BaseModel):
        n: int
        model_config = ConfigDict(extra="forbid")

    class Strict(BaseModel):
        item: Item
        model_config = ConfigDict(strict=True)

    class PlainStrict(BaseModel):
        item: PlainItem
        model_config = ConfigDict(strict=True)

    for text in ('{"item": {"n": "1"}}', '{"item": {"n": 1, "x": 2}}', '{"item": {"n": 1}}'):
        assert outcome(lambda: Strict.model_validate_json(text)) == outcome(  # noqa: B023
            lambda: PlainStrict.model_validate_json(text)  # noqa: B023
        )


# --------------------------------------------------------------------------- stored data read by field name


class AliasedBox(BaseModel):
    inner: str = Field(alias="Inner")


class NamedBox(BaseModel):
    inner: str


@pytest.mark.parametrize("where", ["none", "field", "generator", "nested"])
async def test_stored_data_is_read_by_field_name_with_or_without_aliases(memory_url: str, where: str) -> None:
    """Records hold field names: a class without any alias validates them with no keyword (the
    loader's cheaper call), one with an alias anywhere by name only; both load what was saved."""
    from pydantic.alias_generators import to_camel

    from pydantic_toast._pydantic_internals import names_are_keys

    config = ExternalConfigDict(storage=memory_url)
    if where == "generator":
        config = ExternalConfigDict(storage=memory_url, alias_generator=to_camel, validate_by_name=True)

    box_type = AliasedBox if where == "nested" else NamedBox

    class Item(ExternalBaseModel):
        model_config = config
        full_name: str = Field(alias="fullName") if where == "field" else Field()
        box: box_type | None = None  # type: ignore[valid-type]

    box = AliasedBox(Inner="x") if where == "nested" else NamedBox(inner="x")
    item = Item.model_validate(
        {"fullName" if where in ("field", "generator") else "full_name": "Ann", "box": box}
    )
    reference = await item.save()

    assert names_are_keys(Item) is (where == "none")
    loaded = await Item.load(reference)
    assert loaded == item
    assert (await Item.load_many([reference, reference]))[0] == item
    assert Item.model_validate(reference.model_dump()) == item
    assert loaded.box == box


async def test_a_context_reaches_validators_of_a_class_without_aliases(memory_url: str) -> None:
    seen: list[Any] = []

    class Item(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        name: str

        @field_validator("name")
        @classmethod
        def _note(cls, value: str, info: ValidationInfo) -> str:
            seen.append(info.context)
            return value

    reference = await Item(name="a").save()
    seen.clear()

    await Item.load(reference, context={"who": "load"})
    await Item.load_many([reference], context={"who": "many"})
    await Item.load(reference)

    assert seen == [{"who": "load"}, {"who": "many"}, None]
