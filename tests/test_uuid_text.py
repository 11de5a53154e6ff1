"""`uuid_from_text`, the fast path for a reference's id, agrees with `uuid.UUID` on every text."""

from __future__ import annotations

import pickle
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pydantic_toast import StorageValidationError
from pydantic_toast.reference import parse_id, parse_reference, uuid_from_text

_HEX = "0123456789abcdefABCDEF"
canonical = st.builds(
    lambda value, upper: str(value).upper() if upper else str(value), st.uuids(), st.booleans()
)
# Near misses: canonical text with one character replaced by anything, including non-ASCII
# digits, whitespace, signs, underscores and braces, which int() or UUID() treat specially.
tricky = st.sampled_from([*" _+-{}:\t\n\u0660\uff10gGxX\u00e9"])


def near_miss(text: str, index: int, character: str) -> str:
    return text[:index] + character + text[index + 1 :]


def uuid_or_error(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def assert_same_uuid(fast: uuid.UUID, slow: uuid.UUID) -> None:
    assert fast == slow
    assert fast.int == slow.int
    assert fast.is_safe is slow.is_safe
    assert str(fast) == str(slow)
    assert hash(fast) == hash(slow)
    assert pickle.loads(pickle.dumps(fast)) == slow


@given(canonical)
def test_canonical_text_parses_as_uuid_does(text: str) -> None:
    fast = uuid_from_text(text)
    assert fast is not None
    assert_same_uuid(fast, uuid.UUID(text))


@given(canonical, st.integers(0, 35), tricky | st.characters())
@example("12345678-1234-1234-1234-123456789abc", 0, "+")
@example("12345678-1234-1234-1234-123456789abc", 9, "_")
@example("12345678-1234-1234-1234-123456789abc", 8, "0")
def test_any_other_text_is_left_to_uuid(text: str, index: int, character: str) -> None:
    changed = near_miss(text, index, character)
    fast = uuid_from_text(changed)
    slow = uuid_or_error(changed)
    if fast is not None:
        assert slow is not None
        assert_same_uuid(fast, slow)
    # parse_id, which uses it, accepts exactly what UUID() accepts.
    if slow is None:
        with pytest.raises(StorageValidationError):
            parse_id(changed)
    else:
        assert_same_uuid(parse_id(changed), slow)


@given(st.text(max_size=45))
def test_arbitrary_text_parses_as_uuid_does(text: str) -> None:
    slow = uuid_or_error(text)
    fast = uuid_from_text(text)
    assert fast is None or (slow is not None and fast == slow)
    if slow is None:
        with pytest.raises(StorageValidationError):
            parse_reference({"class_name": "C", "id": text})
    else:
        assert_same_uuid(parse_reference({"class_name": "C", "id": text}).id, slow)


def test_other_forms_uuid_accepts_still_parse() -> None:
    value = uuid.uuid4()
    for text in (f"{{{value}}}", f"urn:uuid:{value}", value.hex, value.hex.upper()):
        assert uuid_from_text(text) is None
        assert_same_uuid(parse_id(text), value)
