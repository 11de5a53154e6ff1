"""Untrusted input: whatever arrives, only documented exceptions come out, and no I/O is wasted.

References reach `model_validate` from HTTP bodies and queues. Property-based tests feed every
backend arbitrary JSON and near-miss references; the only acceptable outcomes are a model, a
library exception, or a pydantic ValidationError — never a driver exception or a hang.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalStorageError

pytestmark = pytest.mark.reliability

EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

weird_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=30, max_size=60),
    st.sampled_from(
        [
            "",
            "\x00",
            "' OR 1=1 --",
            "*",
            "pydantic_toast:*",
            "../../etc/passwd",
            "{00000000-0000-0000-0000-000000000000}",
            "urn:uuid:" + str(uuid4()),
            str(uuid4()).upper(),
            str(uuid4()) + "\x00",
            "x" * 100_000,
        ]
    ),
)

near_miss_references = st.fixed_dictionaries(
    {
        "class_name": st.one_of(st.just("Secret"), weird_text, json_values),
        "id": st.one_of(st.uuids().map(str), st.uuids(), weird_text, json_values),
    },
    optional={"extra": json_values, "\x00": json_values, "data": json_values},
)


def secret_model(storage: str) -> Any:
    class Secret(ExternalBaseModel):
        value: str
        model_config = ExternalConfigDict(storage=storage)

    return Secret


def assert_only_documented_errors(model: Any, payload: Any) -> None:
    try:
        result = model.model_validate(payload)
    except (ExternalStorageError, ValidationError):
        return
    assert isinstance(result, model)


@EXAMPLES
@given(payload=st.one_of(json_values, near_miss_references))
def test_arbitrary_python_input(storage_url: str, payload: Any) -> None:
    assert_only_documented_errors(secret_model(storage_url), payload)


@EXAMPLES
@given(payload=st.one_of(json_values, near_miss_references), raw=st.text(max_size=40))
def test_arbitrary_json_input(storage_url: str, payload: Any, raw: str) -> None:
    model = secret_model(storage_url)
    for text in (json.dumps(payload, default=str), raw):
        with contextlib.suppress(ExternalStorageError, ValidationError):
            model.model_validate_json(text)


@EXAMPLES
@given(reference=near_miss_references)
def test_nested_hostile_references_are_validation_errors(storage_url: str, reference: Any) -> None:
    model = secret_model(storage_url)

    class Envelope(BaseModel):
        secret: model  # type: ignore[valid-type]

    with contextlib.suppress(ValidationError):
        Envelope.model_validate({"secret": reference})


def test_a_reference_never_loads_a_record_of_another_class(storage_url: str) -> None:
    secret = secret_model(storage_url)

    class Public(ExternalBaseModel):
        value: str
        model_config = ExternalConfigDict(storage=storage_url)

    reference = secret(value="classified").model_dump()
    with pytest.raises(ExternalStorageError):
        Public.model_validate(reference)
    with pytest.raises(ExternalStorageError):
        Public.model_validate({"class_name": "Public", "id": reference["id"]})
    assert secret.model_validate(reference).value == "classified"
    assert UUID(reference["id"]).version == 4
