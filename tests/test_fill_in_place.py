"""A parent built once around placeholders and filled in place equals one validated again.

Loading a parent whose schema runs no user code keeps the model built around its children's
placeholders and swaps each for its model once fetched (`TreeLoader._fill`); any shape the fill
cannot prove (sets, dict keys, Toast values, validators, missing children) is validated again as
before. These tests load the same stored parents both ways and compare everything observable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StoredDataError,
    _loading,
)
from pydantic_toast._pydantic_internals import fill_placeholders as _fill
from pydantic_toast._record_state import state_of


@contextmanager
def counting_fills() -> Iterator[list[bool]]:
    """The outcome of every fill in place while the block runs."""
    outcomes: list[bool] = []

    def spy(*args: Any) -> bool:
        outcomes.append(_fill(*args))
        return outcomes[-1]

    with mock.patch.object(_loading, "fill_placeholders", spy):
        yield outcomes


@contextmanager
def two_pass() -> Iterator[None]:
    """Every parent validated again, as before the fill in place existed."""
    with mock.patch.object(_loading, "fill_placeholders", return_value=False):
        yield


def assert_same(fast: Any, slow: Any, pairs: dict[int, int] | None = None) -> None:
    """Equal values, types and record state, and the same sharing of instances."""
    pairs = {} if pairs is None else pairs
    assert type(fast) is type(slow)
    if isinstance(fast, BaseModel | list | dict | tuple | frozenset | set) or dataclasses.is_dataclass(fast):
        seen = pairs.setdefault(id(fast), id(slow))
        assert seen == id(slow), "an instance shared on one side only"
    if isinstance(fast, BaseModel):
        assert fast.model_fields_set == slow.model_fields_set
        assert_same(fast.__dict__, slow.__dict__, pairs)
        assert_same(fast.__pydantic_extra__, slow.__pydantic_extra__, pairs)
        if isinstance(fast, ExternalBaseModel):
            assert dataclasses.astuple(state_of(fast)) == dataclasses.astuple(state_of(slow))
        else:
            assert fast.__pydantic_private__ == slow.__pydantic_private__
    elif dataclasses.is_dataclass(fast):
        for field in dataclasses.fields(fast):
            assert_same(getattr(fast, field.name), getattr(slow, field.name), pairs)
    elif isinstance(fast, dict):
        assert list(fast) == list(slow)
        for key in fast:
            assert_same(fast[key], slow[key], pairs)
    elif isinstance(fast, list | tuple):
        assert len(fast) == len(slow)
        for one, other in zip(fast, slow, strict=True):
            assert_same(one, other, pairs)
    else:
        assert fast == slow


# ---------------------------------------------------------------------------- shapes

Shape = Any  # "child" | "frozen" | "tagged" | (kind, Shape)
Draw = Callable[[st.SearchStrategy[Any]], Any]

_KINDS = ("list", "dict", "tuple", "pair", "optional", "or_int", "model", "frozen_model", "dataclass")

shapes = st.recursive(
    st.sampled_from(["child", "frozen", "tagged"]),
    # A set holds hashable (frozen) children only.
    lambda inner: st.tuples(st.sampled_from((*_KINDS, "set")), inner).map(
        lambda shape: ("set", "frozen") if shape[0] == "set" else shape
    ),
    max_leaves=4,
)


class Classes:
    def __init__(self, storage: str) -> None:
        config = ExternalConfigDict(storage=storage)

        class Child(ExternalBaseModel):
            model_config = config
            name: str
            n: int = 0

        class FrozenChild(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=storage, frozen=True)
            name: str

        class Cat(ExternalBaseModel):
            model_config = config
            kind: Literal["cat"] = "cat"
            name: str

        class Dog(ExternalBaseModel):
            model_config = config
            kind: Literal["dog"] = "dog"
            name: str

        self.storage = storage
        self._annotations: dict[Shape, Any] = {}
        self.child, self.frozen, self.cat, self.dog = Child, FrozenChild, Cat, Dog
        self.tagged: Any = Annotated[Cat | Dog, Field(discriminator="kind")]

    def annotation(self, shape: Shape) -> Any:
        """The type of a shape: one class per shape, so that its values validate as it."""
        known = self._annotations.get(shape)
        if known is None:
            known = self._annotations[shape] = self._new_annotation(shape)
        return known

    def _new_annotation(self, shape: Shape) -> Any:
        if shape == "child":
            return self.child
        if shape == "frozen":
            return self.frozen
        if shape == "tagged":
            return self.tagged
        kind, inner = shape
        item = self.annotation(inner)
        if kind == "list":
            return list[item]  # type: ignore[valid-type]
        if kind == "dict":
            return dict[str, item]  # type: ignore[valid-type]
        if kind == "tuple":
            return tuple[item, ...]  # type: ignore[valid-type]
        if kind == "pair":
            return tuple[int, item]  # type: ignore[valid-type]
        if kind == "optional":
            return item | None
        if kind == "or_int":
            return item | int
        if kind == "set":
            return frozenset[item]  # type: ignore[valid-type]
        if kind == "dataclass":
            return dataclasses.make_dataclass("Box", [("v", item)], frozen=True)
        frozen = kind == "frozen_model"
        return create_model("Box", __config__=ConfigDict(frozen=frozen), v=(item, ...))

    def value(self, shape: Shape, draw: Draw, pool: dict[str, list[Any]]) -> Any:
        if isinstance(shape, str):
            return draw(st.sampled_from(pool[shape]))
        kind, inner = shape
        size = draw(st.integers(0, 3))
        if kind == "list":
            return [self.value(inner, draw, pool) for _ in range(size)]
        if kind == "dict":
            return {f"k{index}": self.value(inner, draw, pool) for index in range(size)}
        if kind == "tuple":
            return tuple(self.value(inner, draw, pool) for _ in range(size))
        if kind == "pair":
            return (size, self.value(inner, draw, pool))
        if kind == "optional":
            return None if size == 0 else self.value(inner, draw, pool)
        if kind == "or_int":
            return size if size == 0 else self.value(inner, draw, pool)
        if kind == "set":
            return frozenset(self.value(inner, draw, pool) for _ in range(size))
        box = self.annotation(shape)
        return box(v=self.value(inner, draw, pool))

    def pool(self) -> dict[str, list[Any]]:
        return {
            "child": [self.child(name=f"c{n}", n=n) for n in range(3)],
            "frozen": [self.frozen(name=f"f{n}") for n in range(3)],
            "tagged": [self.cat(name="tom"), self.dog(name="rex")],
        }


def load_both(parent: Any, reference: dict[str, Any]) -> tuple[Any, Any, list[bool]]:
    with counting_fills() as outcomes:
        fast = parent.model_validate(reference)
    with two_pass():
        slow = parent.model_validate(reference)
    return fast, slow, outcomes


@pytest.fixture
def classes(sqlite_url: str) -> Classes:
    return Classes(sqlite_url)


def make_parent(classes: Classes, annotation: Any, **fields: Any) -> Any:
    namespace: dict[str, Any] = {
        "__annotations__": {"title": str, "v": annotation, **{k: t for k, (t, _) in fields.items()}},
        "model_config": ExternalConfigDict(storage=classes.storage),
        "title": "p",
        **{k: default for k, (_, default) in fields.items()},
    }
    return type("Parent", (ExternalBaseModel,), namespace)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), shape=shapes)
def test_filled_parent_equals_validated_again(classes: Classes, data: st.DataObject, shape: Shape) -> None:
    parent_type = make_parent(classes, classes.annotation(shape))
    value = classes.value(shape, data.draw, classes.pool())
    reference = parent_type(v=value).model_dump()

    fast, slow, _ = load_both(parent_type, reference)

    assert_same(fast, slow)
    assert fast.model_dump_json() == slow.model_dump_json()


def test_list_of_children_is_filled_in_place_and_shares_repeats(classes: Classes) -> None:
    parent_type = make_parent(classes, list[classes.child])  # type: ignore[name-defined]
    one, two = classes.child(name="one"), classes.child(name="two")
    reference = parent_type(v=[one, two, one]).model_dump()

    fast, slow, outcomes = load_both(parent_type, reference)

    assert outcomes == [True]
    assert_same(fast, slow)
    assert fast.v[0] is fast.v[2]
    assert [child.name for child in fast.v] == ["one", "two", "one"]


def test_nested_plain_models_and_tuples_are_filled_in_place(classes: Classes) -> None:
    box = classes.annotation(("frozen_model", ("pair", "child")))
    parent_type = make_parent(classes, dict[str, box])  # type: ignore[valid-type]
    reference = parent_type(v={"a": box(v=(1, classes.child(name="x")))}).model_dump()

    fast, slow, outcomes = load_both(parent_type, reference)

    assert outcomes == [True]
    assert_same(fast, slow)
    assert fast.v["a"].v[1].name == "x"


def test_a_set_of_children_is_validated_again(classes: Classes) -> None:
    parent_type = make_parent(classes, frozenset[classes.frozen])  # type: ignore[name-defined]
    reference = parent_type(v=frozenset({classes.frozen(name="a"), classes.frozen(name="b")})).model_dump()

    fast, slow, outcomes = load_both(parent_type, reference)

    assert outcomes == [False]  # a set hashed its placeholders: not filled in place
    assert_same(fast, slow)
    assert {child.name for child in fast.v} == {"a", "b"}


def test_a_parent_with_a_validator_never_sees_placeholders(classes: Classes) -> None:
    seen: list[list[str]] = []

    class Checked(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=classes.storage)
        v: list[classes.child]  # type: ignore[name-defined]

        @field_validator("v")
        @classmethod
        def _names(cls, value: list[Any]) -> list[Any]:
            seen.append([child.name for child in value])
            return value

    reference = Checked(v=[classes.child(name="a")]).model_dump()
    seen.clear()

    fast, slow, outcomes = load_both(Checked, reference)

    assert outcomes == []  # user code runs on the data: validated again, never filled in place
    assert seen == [["a"], ["a"]]
    assert_same(fast, slow)


async def test_a_missing_child_fails_as_before(classes: Classes) -> None:
    parent_type = make_parent(classes, list[classes.child])  # type: ignore[name-defined]
    gone = classes.child(name="gone")
    reference = await parent_type(v=[classes.child(name="kept"), gone]).save()
    await gone.delete()

    with counting_fills() as outcomes, pytest.raises(StoredDataError) as fast:
        await parent_type.load(reference)
    with two_pass(), pytest.raises(StoredDataError) as slow:
        await parent_type.load(reference)

    assert outcomes == []  # resolving the missing child failed: validated again, which raises
    assert str(fast.value) == str(slow.value)
    assert isinstance(fast.value.__cause__ or fast.value, StoredDataError | RecordNotFoundError)


async def test_a_missing_child_in_a_union_falls_back_as_before(classes: Classes) -> None:
    parent_type = make_parent(classes, list[classes.child | dict[str, str]])  # type: ignore[name-defined]
    gone = classes.child(name="gone")
    reference = await parent_type(v=[classes.child(name="kept"), gone]).save()
    await gone.delete()

    with counting_fills() as outcomes:
        fast = await parent_type.load(reference)
    with two_pass():
        slow = await parent_type.load(reference)

    assert outcomes == []
    assert_same(fast, slow)
    assert isinstance(fast.v[1], dict)  # the reference, kept as data by the union's other choice


async def test_async_load_and_load_many_fill_in_place(classes: Classes) -> None:
    parent_type = make_parent(classes, list[classes.child])  # type: ignore[name-defined]
    parents = [parent_type(v=[classes.child(name=f"{p}.{n}") for n in range(3)]) for p in range(3)]
    references = await parent_type.save_many(parents)

    with counting_fills() as outcomes:
        fast = await parent_type.load_many(references)
        single = await parent_type.load(references[0])
    with two_pass():
        slow = await parent_type.load_many(references)

    assert outcomes == [True, True, True, True]
    assert_same(fast, slow)
    assert_same(single, slow[0])


def test_frozen_parent_with_a_direct_child_and_extras_is_filled_in_place(classes: Classes) -> None:
    child = classes.frozen

    class Frozen(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=classes.storage, frozen=True, extra="allow")
        __pydantic_extra__: dict[str, child]  # type: ignore[valid-type]
        one: child  # type: ignore[valid-type]

    original = Frozen(one=child(name="a"), more=child(name="b"))
    reference = original.model_dump()

    fast, slow, outcomes = load_both(Frozen, reference)

    assert outcomes == [True]
    assert_same(fast, slow)
    assert fast.one.name == "a"
    assert fast.__pydantic_extra__["more"].name == "b"
    assert hash(fast) == hash(slow)


def test_a_subclass_through_a_base_class_field_and_a_deeper_tree(classes: Classes) -> None:
    class Base(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=classes.storage)
        name: str

    class Sub(Base):
        extra_field: int = 7

    class Middle(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=classes.storage)
        items: list[Base]

    top_type = make_parent(classes, list[Middle])
    shared = Middle(items=[Sub(name="s", extra_field=3), Base(name="b")])
    reference = top_type(v=[shared, Middle(items=[]), shared]).model_dump()

    fast, slow, outcomes = load_both(top_type, reference)

    assert outcomes == [True, True]  # the middle record, then the top one
    assert_same(fast, slow)
    assert type(fast.v[0].items[0]) is Sub
    assert fast.v[0] is fast.v[2]


def test_a_parent_with_private_attributes_is_validated_again(classes: Classes) -> None:
    class Private(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=classes.storage)
        v: list[classes.child]  # type: ignore[name-defined]
        _note: str = "default"

    reference = Private(v=[classes.child(name="a")]).model_dump()

    fast, slow, outcomes = load_both(Private, reference)

    assert outcomes == []  # pydantic's post-init sets the private attributes: validated again
    assert_same(fast, slow)
    assert fast._note == "default"
