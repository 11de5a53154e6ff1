"""`ExternalTypeAdapter`: store a whole value of any type, with explicit save and load calls.

The API of the upstream project (nurikk/pydantic-toast), so its users switch by changing an
import. It is `TypeAdapter(Annotated[type_, Toast(storage=storage_url)])` underneath: the same
serializer, records, content addressing and checks as a `Toast` field, and the reference a save
returns is the plain dict inside a Toast field's reference (`json.dumps(ref)`, `ref["id"]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Generic, TypeVar, cast, overload

from pydantic import TypeAdapter, ValidationError

from . import _loading, _writing
from .exceptions import ExternalStorageError, StorageValidationError
from .reference import ExternalReference
from .toast import MARKER, Toast, ToastField

__all__ = ["ExternalTypeAdapter"]

T = TypeVar("T")


class ExternalTypeAdapter(Generic[T]):
    """Store values of `type_` (a TypedDict, dataclass, NamedTuple, `list[Model]`, a primitive...)
    in the store at `storage_url`; a save returns `{"class_name": ..., "id": ..., "digest": ...}`.

    Records are content-addressed: saving an equal value again returns the same reference and
    (in this process) writes nothing. `name` sets the records' `class_name` (default: the type's
    name, such as "list[Product]"); `compression` as for `Toast`.
    """

    @overload
    def __init__(
        self, type_: type[T], storage_url: str, *, name: str | None = None, compression: str | None = None
    ) -> None: ...

    @overload
    def __init__(  # unions, Literal, Annotated: forms that are not `type[T]` to a type checker
        self: ExternalTypeAdapter[Any],
        type_: Any,
        storage_url: str,
        *,
        name: str | None = None,
        compression: str | None = None,
    ) -> None: ...

    def __init__(
        self, type_: Any, storage_url: str, *, name: str | None = None, compression: str | None = None
    ) -> None:
        self._toast = Toast(storage=storage_url, name=name, compression=compression)
        annotated: Any = Annotated[type_, self._toast]
        self._adapter: TypeAdapter[T] = TypeAdapter(annotated)
        self._field = ToastField(self._toast, type_)
        self._plain: TypeAdapter[Any] = TypeAdapter(type_)

    @property
    def type_name(self) -> str:
        """The `class_name` of this adapter's records and references."""
        return self._field.name

    def _validated(self, value: Any) -> Any:
        try:
            return self._plain.validate_python(value)
        except ValidationError as exc:
            # Pydantic's message quotes the input: keep where and what kind of error only.
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            kinds = ", ".join(sorted({line["type"] for line in errors}))
            raise StorageValidationError(
                f"the value is not a valid {self.type_name}: {len(errors)} error(s) ({kinds}); pass a value "
                "of the adapter's type",
                expected=self.type_name,
                actual=type(value).__name__,
            ) from None

    def _marked(self, reference: object) -> dict[str, Any]:
        if isinstance(reference, ExternalReference):
            reference = reference.as_dict()
        if isinstance(reference, Mapping) and MARKER in reference and len(reference) == 1:
            return dict(reference)
        if not isinstance(reference, Mapping):
            raise StorageValidationError(
                f"a reference is {{'class_name': ..., 'id': ...}}, got {type(reference).__name__}",
                expected="reference",
                actual=type(reference).__name__,
            )
        return {MARKER: dict(reference)}

    async def save_external(self, value: T) -> dict[str, Any]:
        """Validate and store `value` (on the running loop); return its reference."""
        checked = self._validated(value)
        with _writing.collecting_writes() as write_set:
            marked = self._field.reference_of(checked)
        await write_set.flush()
        return cast(dict[str, Any], marked[MARKER])

    def save_external_sync(self, value: T) -> dict[str, Any]:
        """`save_external` for synchronous code (also works inside a running event loop)."""
        checked = self._validated(value)
        # Outside a dump, storing a value writes it at once (through the I/O thread).
        return cast(dict[str, Any], self._field.reference_of(checked)[MARKER])

    async def load_external(self, reference: Mapping[str, Any] | ExternalReference) -> T:
        """Load the value a reference points at (on the running loop), checked against its digest."""
        parsed, expected = self._field.parse(self._marked(reference)[MARKER])
        record = await _loading.fetch_record(self._field.settings, parsed)
        value = _loading.read_value(self._field.reader(expected), record, None)
        return cast(T, value)

    def load_external_sync(self, reference: Mapping[str, Any] | ExternalReference) -> T:
        """`load_external` for synchronous code."""
        try:
            return self._adapter.validate_python(self._marked(reference))
        except ValidationError as exc:
            _raise_unwrapped(exc)
            raise


def _raise_unwrapped(exc: ValidationError) -> None:
    errors = exc.errors()
    if len(errors) == 1 and not errors[0]["loc"]:
        original = (errors[0].get("ctx") or {}).get("error")
        if isinstance(original, ExternalStorageError):
            raise original from None
