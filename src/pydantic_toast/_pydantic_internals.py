"""Everything in pydantic-toast that depends on how pydantic works inside: review it on an upgrade.

* Inner validators and serializers. Each external class gets validators and a serializer built
  from its core schema without our wrap hooks (see `_build_inner`), and a scan of that schema
  for what validating it runs (`holds_references`, `runs_no_user_code`).
* `schema_names`: the field names, aliases and union tags of a core schema, which tell the parts
  of an error location that are not data.
* `serializer_error_fields`: the field names in the text of pydantic's serializer warnings.
* `fill_placeholders`: where a validated model keeps the values its validators returned (fields in
  `__dict__`, extras in `__pydantic_extra__`, dataclass attributes), to swap placeholders in place.
* Discriminated unions of external models. A field such as
  `Annotated[Cat | Dog, Field(discriminator="kind")]` becomes a pydantic-core tagged union that
  reads the tag from the input's "kind" key; an external model's own dump in that field is a
  reference, `{"class_name": "Dog", "id": ...}`, which has no such key, so pydantic refused it with
  `union_tag_not_found`. Pydantic builds the tagged union in the *parent's* schema, where no hook of
  ours runs, so the function that builds it is wrapped here: when a choice is an external model,
  the tag is looked up under the discriminator first and under "class_name" second, and every
  storage name (of the choice's class and of its subclasses defined so far) is added as a tag of
  that choice. Data keeps its own tag; a reference is routed by its class name.

Checked against pydantic 2.11-2.14 (`pydantic._internal._discriminated_union.apply_discriminator`,
called through its module by `GenerateSchema`). Should that function move, `install` does nothing
and discriminated unions of external models fail as before, with pydantic's own error.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from pydantic import BaseModel
from pydantic_core import (
    CoreSchema,
    PydanticSerializationError,
    SchemaSerializer,
    SchemaValidator,
    core_schema,
)

from . import forksafe
from ._record_state import is_external
from .exceptions import StorageValidationError

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = [
    "StoredReference",
    "core_validator",
    "data_schema",
    "collect_placeholders",
    "fill_placeholders",
    "holds_references",
    "inner_serializer",
    "inner_validator",
    "install",
    "json_schema_metadata",
    "model_serializers",
    "names_are_keys",
    "runs_no_user_code",
    "schema_holds_references",
    "schema_names",
    "serializer_error_fields",
    "stored_reader",
    "surrounding_json_config",
]

# --------------------------------------------------------------------------- discriminated unions

_WRAPPERS = ("function-before", "function-after", "function-wrap", "default", "nullable")


def install(external_base: type[ExternalBaseModel]) -> None:
    """Wrap pydantic's discriminator application once per process."""
    try:
        from pydantic._internal import _discriminated_union
    except ImportError:  # pragma: no cover - a pydantic without the private module
        return
    original: Callable[..., Any] | None = getattr(_discriminated_union, "apply_discriminator", None)
    if original is None or getattr(original, "__toast_wrapped__", False):
        return

    def apply_discriminator(schema: Any, discriminator: Any, definitions: Any = None) -> Any:
        applied = original(schema, discriminator, definitions)
        _accept_references(applied, definitions or {}, external_base)
        return applied

    apply_discriminator.__toast_wrapped__ = True  # type: ignore[attr-defined]
    _discriminated_union.apply_discriminator = apply_discriminator


def _accept_references(schema: Any, definitions: dict[str, Any], external_base: type[Any]) -> None:
    """Let the tagged union at the top of `schema` route references of its external choices."""
    while isinstance(schema, dict) and schema.get("type") in ("nullable", "definitions", "missing-sentinel"):
        if schema["type"] == "definitions":
            definitions = {**definitions, **{d["ref"]: d for d in schema["definitions"] if "ref" in d}}
        schema = schema.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "tagged-union":
        return
    discriminator = schema["discriminator"]
    if callable(discriminator):
        return  # the user's own Discriminator function decides
    choices: dict[Any, Any] = schema["choices"]
    added: dict[Any, Any] = {}
    for tag, choice in choices.items():
        cls = _model_class(choice, definitions)
        if cls is None or not issubclass(cls, external_base):
            continue
        for sub in (cls, *_subclasses(cls)):
            settings = sub.__dict__.get("__toast_settings__")
            if settings is None:
                continue
            name = settings.storage_name
            owner = choices.get(name, added.get(name))
            if owner is not None and owner is not choice:
                raise StorageValidationError(
                    f"{sub.__qualname__}'s storage name {name!r} is also the discriminator value of another "
                    f"choice of this union (tag {tag!r}), so its references could not be told apart; "
                    "give it another storage_name",
                    expected="a storage name that is not a discriminator value",
                    actual=name,
                )
            added[name] = choice
    if not added:
        return
    paths: list[Any]
    if isinstance(discriminator, str):
        paths = [[discriminator]]
    elif discriminator and isinstance(discriminator[0], list):
        paths = list(discriminator)
    else:
        paths = [discriminator]
    schema["discriminator"] = [*paths, ["class_name"]]
    choices.update({name: choice for name, choice in added.items() if name not in choices})


def _model_class(choice: Any, definitions: dict[str, Any]) -> type[Any] | None:
    for _ in range(50):  # wrappers are few; the bound only guards against a malformed schema
        if not isinstance(choice, dict):
            return None
        kind = choice.get("type")
        if kind == "definition-ref":
            choice = definitions.get(choice.get("schema_ref", ""))
        elif kind == "model":
            cls = choice.get("cls")
            return cls if isinstance(cls, type) else None
        elif kind in _WRAPPERS and "schema" in choice:
            choice = choice["schema"]
        else:
            return None
    return None


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    found: list[type[Any]] = []
    pending = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        found.append(sub)
        pending.extend(sub.__subclasses__())
    return found


# --------------------------------------------------------------------------- inner validators and serializers

_build_lock = forksafe.Lock()


def inner_validator(cls: type[ExternalBaseModel]) -> SchemaValidator:
    """A validator for `cls`'s own data: its core schema minus our wrap validator at the top."""
    cached = cls.__dict__.get("__toast_inner_validator__")
    if cached is None:
        cached = _build_inner(cls)[0]
    return cast(SchemaValidator, cached)


def holds_references(cls: type[ExternalBaseModel]) -> bool:
    """Whether `cls`'s own data can refer to external models (its schema holds our hook)."""
    # On the hot path of loading a tree (once per reference and pass): the cache is read inline.
    traits: tuple[bool, bool, bool] = cls.__dict__.get("__toast_read_traits__") or _read_traits(cls)
    return traits[0]


def json_schema_metadata(function: Callable[..., Any]) -> dict[str, Any]:
    """Core-schema metadata that makes `function(schema, handler)` give the schema's JSON schema
    (pydantic's own key for it: what `__get_pydantic_json_schema__` of an annotation becomes)."""
    return {"pydantic_js_functions": [function]}


# Keys of the config around a field that change what its value's JSON means.
_JSON_CONFIG_KEYS = (
    "strict",
    "ser_json_bytes",
    "val_json_bytes",
    "ser_json_inf_nan",
    "ser_json_timedelta",
    "ser_json_temporal",
    "val_temporal_unit",
    "coerce_numbers_to_str",
    "regex_engine",
)


def surrounding_json_config(handler: Any) -> dict[str, Any]:
    """The JSON-relevant config keys in force where a `GetCoreSchemaHandler` builds a schema (the
    model, dataclass or TypeAdapter a field belongs to); empty if pydantic hides them."""
    wrapper = getattr(getattr(handler, "_generate_schema", None), "_config_wrapper", None)
    config = getattr(wrapper, "config_dict", None)
    if not isinstance(config, dict):
        return {}
    return {key: config[key] for key in _JSON_CONFIG_KEYS if key in config}


def schema_holds_references(schema: object) -> bool:
    """Whether validating `schema` can meet an external model or a Toast value (our hooks)."""
    return _scan(schema)[0]


def names_are_keys(cls: type[ExternalBaseModel]) -> bool:
    """Whether no field validated as part of `cls` has an alias: then stored data validates the
    same by field name (`by_name=True, by_alias=False`) as with the config's defaults, and the
    loader leaves those keywords out (each costs pydantic-core a keyword match per call)."""
    cached = cls.__dict__.get("__toast_names_are_keys__")
    if cached is None:
        cached = not _has_alias(cls.__pydantic_core_schema__)
        type.__setattr__(cls, "__toast_names_are_keys__", cached)
    return cast(bool, cached)


def _has_alias(schema: object) -> bool:
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("validation_alias") is not None or node.get("alias") is not None:
                return True
            pending.extend(value for key, value in node.items() if key not in ("metadata", "serialization"))
        elif isinstance(node, list | tuple):
            pending.extend(node)
    return False


def runs_no_user_code(cls: type[ExternalBaseModel], full: bool) -> bool:
    """Whether validating `cls`'s data (with the validators above our hook: `full`) calls no code
    but pydantic-core's and our hook's: no validator, no custom __init__, no post-init."""
    return _read_traits(cls)[2 if full else 1]


def _read_traits(cls: type[ExternalBaseModel]) -> tuple[bool, bool, bool]:
    cached = cls.__dict__.get("__toast_read_traits__")
    if cached is None:
        _build_inner(cls)
        cached = cls.__dict__["__toast_read_traits__"]
    return cast(tuple[bool, bool, bool], cached)


def core_validator(cls: type[ExternalBaseModel]) -> SchemaValidator:
    """A validator for `cls`'s own data with only the schema below our wrap validator.

    Used where pydantic itself goes on to run the validators above our hook on what it returns
    (the user's `mode="after"` and `mode="wrap"` model validators), so they run once, not twice.
    """
    cached = cls.__dict__.get("__toast_core_validator__")
    if cached is None:
        _build_inner(cls)
        cached = cls.__dict__["__toast_core_validator__"]
    return cast(SchemaValidator, cached)


class StoredReference:
    """A reference to an external model, in a record validated by `stored_reader`'s validator:
    built by pydantic-core where our hook would otherwise be called, resolved by the loader
    afterwards and swapped in place for its model (`collect_placeholders`, `fill_placeholders`)."""

    # Built by pydantic-core as a slots dataclass (it sets `class_name` and `id`): one object
    # for the collector to track, where a model schema made three (instance, __dict__, fields set).
    __slots__ = ("class_name", "cls", "id", "leaf", "model", "target")

    class_name: str
    id: UUID
    # Set by the loader, as on its own placeholders: the class it loads as, what resolving it
    # again looks up (None once resolved), and its model.
    cls: type[Any]
    target: type[Any]
    leaf: Any
    model: object


_UNBUILT = object()

# Node types whose validated value sits where `fill_placeholders` looks, with the keys below them
# that may hold a reference. (Not unions: a smart union weighs each choice's result, and would
# weigh a StoredReference differently from what our hook returns. Not a nested model: pydantic-core
# reuses a complete class's own validator, which calls our hook.)
_WALKED: dict[str, tuple[str, ...]] = {
    "model-fields": ("fields", "extras_schema"),
    "model-field": ("schema",),
    "list": ("items_schema",),
    "dict": ("values_schema",),
    "nullable": ("schema",),
    "default": ("schema",),
}


def stored_reader(cls: type[ExternalBaseModel]) -> tuple[SchemaValidator, dict[str, type[Any]]] | None:
    """A validator of `cls`'s stored data (the schema below our hook) that turns each reference
    to a field's own class into a `StoredReference` without a call to our hook, and the classes
    by storage name; None unless that is certain to build the model validating with the hook
    builds around its placeholders.

    Only for data that runs no user code and whose references all sit where the fill in place
    looks, each to a class that holds no references itself. Any other input at such a place
    (a subclass's reference, inline data, a malformed reference) goes to our hook as before.
    """
    cached = cls.__dict__.get("__toast_stored_reader__", _UNBUILT)
    if cached is _UNBUILT:
        cached = None
        schema, definitions = _own_schema(cls)
        below = _below_own_validator(schema)
        names: dict[str, type[Any]] = {}
        by_ref = {d["ref"]: d for d in definitions if isinstance(d, dict) and "ref" in d}
        holds, no_user_code = _read_traits(cls)[:2]
        if below["type"] == "model" and holds and no_user_code:
            inner = _read_references(below["schema"], by_ref, names)
            if inner is not None and names:
                reading = {**below, "schema": inner}
                node = core_schema.definitions_schema(reading, definitions) if definitions else reading
                with _build_lock:
                    type.__setattr__(cls, "__pydantic_complete__", False)  # as in _build_inner
                    try:
                        validator = SchemaValidator(cast(CoreSchema, node), below.get("config"))
                    finally:
                        type.__setattr__(cls, "__pydantic_complete__", True)
                cached = (validator, names)
        type.__setattr__(cls, "__toast_stored_reader__", cached)
    return cast("tuple[SchemaValidator, dict[str, type[Any]]] | None", cached)


def _read_references(node: Any, by_ref: dict[str, Any], names: dict[str, type[Any]]) -> Any:
    """`node` with each hook below it, where the fill looks, made to read a reference without
    our hook first; None if a hook sits anywhere else, or cannot be read so."""
    if not isinstance(node, dict):
        return None if _reaches_hook(node, by_ref) else node
    hooked = _hook_class(node)
    if hooked is None and node.get("type") == "definition-ref":
        hooked = _hook_class(by_ref.get(str(node.get("schema_ref"))))
    if hooked is not None:
        return _or_reference(node, hooked, names)
    keys = _WALKED.get(node.get("type", ""))
    if keys is None:
        return None if _reaches_hook(node, by_ref) else node
    copied = dict(node)
    for key, value in node.items():
        if key in ("metadata", "serialization"):
            continue
        if key not in keys:
            if _reaches_hook(value, by_ref):
                return None
        elif key == "fields":
            fields = {}
            for name, field in value.items():
                fields[name] = _read_references(field, by_ref, names)
                if fields[name] is None:
                    return None
            copied[key] = fields
        else:
            copied[key] = _read_references(value, by_ref, names)
            if copied[key] is None:
                return None
    return copied


def _hook_class(node: Any) -> type[Any] | None:
    """The external class whose wrap validator `node` is, if it is one."""
    if not isinstance(node, dict) or node.get("type") != "function-wrap":
        return None
    function = node.get("function")
    hook = function.get("function") if isinstance(function, dict) else None
    owner = getattr(hook, "__self__", None)
    return owner if getattr(hook, "__toast_hook__", False) and isinstance(owner, type) else None


def _or_reference(node: dict[str, Any], cls: type[Any], names: dict[str, type[Any]]) -> Any:
    """Try a reference to `cls` itself, in pydantic-core; else `node` (our hook) as before."""
    settings = cls.__dict__.get("__toast_settings__")
    if settings is None or holds_references(cls):
        return None  # resolved by the hook, or waits for records of its own: not read here
    name = settings.storage_name
    if names.setdefault(name, cls) is not cls:
        return None  # two classes of one storage name: the name does not tell them apart
    fields = [
        core_schema.dataclass_field("class_name", core_schema.literal_schema([name])),
        core_schema.dataclass_field("id", core_schema.uuid_schema()),
    ]
    reference = core_schema.dataclass_schema(
        StoredReference,
        core_schema.dataclass_args_schema("StoredReference", fields, extra_behavior="forbid"),
        ["class_name", "id"],
        slots=True,
    )
    return core_schema.union_schema([reference, cast(CoreSchema, node)], mode="left_to_right")


def _reaches_hook(node: object, by_ref: dict[str, Any]) -> bool:
    """Whether validating `node` can call our hook or a Toast value's, following definitions."""
    pending, seen = [node], set()
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            function = item.get("function")
            hook = function.get("function") if isinstance(function, dict) else None
            if getattr(hook, "__toast_hook__", False) or getattr(hook, "__toast_value_hook__", False):
                return True
            ref = item.get("schema_ref") if item.get("type") == "definition-ref" else None
            if isinstance(ref, str) and ref not in seen:
                seen.add(ref)
                pending.append(by_ref.get(ref))
            pending.extend(value for key, value in item.items() if key not in ("metadata", "serialization"))
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def inner_serializer(cls: type[ExternalBaseModel]) -> SchemaSerializer:
    """A serializer of `cls`'s own data: its core schema minus our wrap serializer at the top.

    Nested external models keep theirs (they become references); only this class's own
    instance is serialized in full, without a round trip through a Python-level hook.
    """
    cached = cls.__dict__.get("__toast_inner_serializer__")
    if cached is None:
        cached = _build_inner(cls)[1]
    return cast(SchemaSerializer, cached)


def _build_inner(cls: type[ExternalBaseModel]) -> tuple[SchemaValidator, SchemaSerializer]:
    schema, definitions = _own_schema(cls)
    stripped = _strip_own_validator(schema)
    below = _below_own_validator(schema)
    stripped_model = _model_node_without(stripped, "serialization")  # our wrap serializer

    def top(node: dict[str, Any]) -> Any:
        return core_schema.definitions_schema(node, definitions) if definitions else node

    config = stripped.get("config") or schema.get("config")
    with _build_lock:
        # pydantic-core reuses a complete class's own validator and serializer for its 'model'
        # node, which would put our hooks straight back; hide completeness while building.
        type.__setattr__(cls, "__pydantic_complete__", False)
        try:
            validator = SchemaValidator(top(stripped), config)
            core = SchemaValidator(top(below), config)
            serializer = SchemaSerializer(top(stripped_model), config)
        finally:
            type.__setattr__(cls, "__pydantic_complete__", True)
    type.__setattr__(cls, "__toast_inner_validator__", validator)
    type.__setattr__(cls, "__toast_core_validator__", core)
    holds, user_code_below = _scan([below, definitions])
    user_code_above = _scan([stripped, definitions])[1]
    type.__setattr__(cls, "__toast_read_traits__", (holds, not user_code_below, not user_code_above))
    type.__setattr__(cls, "__toast_inner_serializer__", serializer)
    return validator, serializer


def _own_schema(cls: type[ExternalBaseModel]) -> tuple[dict[str, Any], list[Any]]:
    """`cls`'s core schema from its own node down (our hook on top), and its definitions."""
    if not cls.__pydantic_complete__:
        cls.model_rebuild(raise_errors=True)
    schema = cast(dict[str, Any], cls.__pydantic_core_schema__)
    definitions: list[Any] = []
    if schema["type"] == "definitions":
        definitions = schema["definitions"]
        schema = schema["schema"]
    if schema["type"] == "definition-ref":
        schema = next(d for d in definitions if d.get("ref") == schema["schema_ref"])
    return schema, definitions


def data_schema(schema: CoreSchema) -> CoreSchema:
    """A copy of an external class's core schema that describes its data when serialized:
    without our wrap serializer (pydantic shows a wrap serializer's output as any value), its
    reference (the class's own definition is the reference-or-data schema being generated) and
    its metadata (the JSON schema hook that is asking)."""
    node = _model_node_without(cast(dict[str, Any], schema), "serialization")
    return cast(CoreSchema, {key: value for key, value in node.items() if key not in ("ref", "metadata")})


def _model_node_without(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """The same schema with `key` removed from its model node (wrappers above it are copied)."""
    if schema["type"] == "model":
        return {name: value for name, value in schema.items() if name != key}
    if "schema" in schema and isinstance(schema["schema"], dict):
        return {**schema, "schema": _model_node_without(schema["schema"], key)}
    return schema


_USER_CODE_KEYS = ("post_init", "custom_init", "default_factory_takes_data")


def _scan(schema: object) -> tuple[bool, bool]:
    """(our hook occurs in `schema`, code other than pydantic-core's runs on validating it).

    A nested external model's hook returns a built model, so the scan does not look below it.
    """
    holds_hook = runs_code = False
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            function = node.get("function")
            if isinstance(function, dict) and getattr(function.get("function"), "__toast_hook__", False):
                holds_hook = True
                continue
            if isinstance(function, dict) and getattr(
                function.get("function"), "__toast_value_hook__", False
            ):
                # A Toast field's validator: it may wait for a record like a nested model does,
                # and runs no user code itself; the field's own type is scanned as usual.
                holds_hook = True
                pending.append(node.get("schema"))
                continue
            if (
                callable(function)
                or isinstance(function, dict)
                or any(node.get(key) for key in _USER_CODE_KEYS)
            ):
                runs_code = True
            pending.extend(
                value for key, value in node.items() if key not in ("metadata", "serialization", "function")
            )
        elif isinstance(node, list | tuple):
            pending.extend(node)
    return holds_hook, runs_code


def _below_own_validator(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema our wrap validator hands on to (the whole schema, should it be missing)."""
    node = schema
    while node["type"] in ("function-before", "function-after", "function-wrap") and "schema" in node:
        if node["type"] == "function-wrap" and getattr(node["function"]["function"], "__toast_hook__", False):
            return {key: value for key, value in node["schema"].items() if key != "ref"}
        node = node["schema"]
    return {key: value for key, value in schema.items() if key != "ref"}


def _strip_own_validator(schema: dict[str, Any]) -> dict[str, Any]:
    if schema["type"] == "function-wrap" and getattr(schema["function"]["function"], "__toast_hook__", False):
        return cast(dict[str, Any], schema["schema"])
    if schema["type"] in ("function-before", "function-after", "function-wrap") and "schema" in schema:
        copied = {key: value for key, value in schema.items() if key != "ref"}
        copied["schema"] = _strip_own_validator(schema["schema"])
        return copied
    return {key: value for key, value in schema.items() if key != "ref"}


# --------------------------------------------------------------------------- error locations and messages


def _flatten(parts: list[Any]) -> list[object]:
    flat: list[object] = []
    for part in parts:
        flat.extend(_flatten(part) if isinstance(part, list) else [part])
    return flat


def schema_names(cls: type[ExternalBaseModel]) -> frozenset[object]:
    """Field names, aliases and union tags of `cls`'s schema: the parts of an error location that
    are not data."""
    cached = cls.__dict__.get("__toast_schema_names__")
    if cached is not None:
        return cast(frozenset[object], cached)
    names: set[object] = set()
    pending: list[object] = [cls.__pydantic_core_schema__]
    while pending:
        node = pending.pop()
        if isinstance(node, list | tuple):
            pending.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("model-fields", "typed-dict") and isinstance(node.get("fields"), dict):
                names.update(node["fields"])
            elif kind == "dataclass-args":
                names.update(field.get("name") for field in node.get("fields", ()))
            elif kind == "tagged-union" and isinstance(node.get("choices"), dict):
                names.update(node["choices"])
            alias = node.get("validation_alias")
            if isinstance(alias, str):
                names.add(alias)
            elif isinstance(alias, list):  # alias paths: their parts are names too
                names.update(_flatten(alias))
            pending.extend(value for key, value in node.items() if key != "metadata")
    frozen = frozenset(names)
    type.__setattr__(cls, "__toast_schema_names__", frozen)
    return frozen


_FIELD_NAME = re.compile(r"field_name='([^']*)'")


def model_serializers(cls: type[Any]) -> dict[str, Callable[..., Any]]:
    """The functions of the `@model_serializer`s pydantic found on `cls`, by name."""
    decorators = cls.__pydantic_decorators__.model_serializers
    return {name: decorator.func for name, decorator in decorators.items()}


def serializer_error_fields(exc: PydanticSerializationError) -> list[str]:
    """The names of the fields a serializer warning turned error is about; its values are dropped."""
    return sorted(set(_FIELD_NAME.findall(str(exc))))


# --------------------------------------------------------------------------- placeholders in a built model

_model_of = operator.attrgetter("model")

# Values that cannot hold a placeholder: skipped without a look inside.
_LEAVES = frozenset({str, int, float, bool, bytes, type(None)})


class _Fill:
    __slots__ = ("found", "kind", "left", "models", "taken")

    def __init__(
        self, kind: type[Any], left: int, found: list[Any] | None = None, models: list[Any] | None = None
    ) -> None:
        self.kind = kind
        self.left = left
        # Collecting (`collect_placeholders`): each one found is appended here and left in place.
        self.found = found
        # Filling from a list: the placeholders' models in the order the walk meets them.
        self.models = models
        self.taken = 0


def _model_for(placeholder: Any, fill: _Fill) -> Any:
    models = fill.models
    if models is None:
        return placeholder.model
    fill.taken += 1
    return models[fill.taken - 1]


def fill_placeholders(model: Any, kind: type[Any], count: int, models: list[Any] | None = None) -> bool:
    """Replace, in the freshly validated `model`, each of the `count` objects of type `kind` it
    holds by its `.model` (or, given `models`, by the next of those: the models of the objects
    `collect_placeholders` found, in its order); False when fewer were found (some sit where this
    walk does not look).

    Looked into: the model's fields and extras, and below them lists, dict values, tuples (rebuilt),
    plain models and dataclasses. Not into sets or dict keys, where a value's hash was taken
    with the placeholder in it, nor into external models (built by a validation of their own).
    """
    fill = _Fill(kind, count, None, models)
    _fill_model(model, fill)
    return fill.left == 0


def collect_placeholders(model: Any, kind: type[Any]) -> list[Any]:
    """The objects of type `kind` in `model`, in the order `fill_placeholders` meets them: the
    same walk, so that filling the same model later finds every one of them."""
    found: list[Any] = []
    _fill_model(model, _Fill(kind, -1, found))  # never reaches 0: the whole model is walked
    return found


def _fill_model(model: BaseModel, fill: _Fill) -> None:
    _fill_mapping(model.__dict__, fill)
    extra = model.__pydantic_extra__
    if fill.left and type(extra) is dict:
        _fill_mapping(extra, fill)


def _fill_mapping(mapping: dict[Any, Any], fill: _Fill) -> None:
    for key, value in list(mapping.items()):
        if not fill.left:
            return
        if type(value) not in _LEAVES:
            filled = _filled(value, fill)
            if filled is not value:
                mapping[key] = filled


def _filled(value: Any, fill: _Fill) -> Any:
    kind = type(value)
    if kind is fill.kind:
        fill.left -= 1
        if fill.found is not None:
            fill.found.append(value)
            return value
        return _model_for(value, fill)
    if kind is list:
        placeholder, found = fill.kind, fill.found
        if value and type(value[0]) is placeholder and set(map(type, value)) == {placeholder}:
            # The common case, a list of children and nothing else: in C, item by item as below.
            if found is not None:
                found.extend(value)
                fill.left -= len(value)
                return value
            if fill.left >= len(value):
                models, taken = fill.models, fill.taken
                if models is None:
                    value[:] = map(_model_of, value)
                else:
                    value[:] = models[taken : taken + len(value)]
                    fill.taken += len(value)
                fill.left -= len(value)
                return value
        for index, item in enumerate(value):
            if not fill.left:
                break
            item_kind = type(item)
            if item_kind is placeholder:  # the common case, inline: a list of children
                fill.left -= 1
                if found is None:
                    value[index] = _model_for(item, fill)
                else:
                    found.append(item)
            elif item_kind not in _LEAVES:
                filled = _filled(item, fill)
                if filled is not item:
                    value[index] = filled
    elif kind is dict:
        _fill_mapping(value, fill)
    elif kind is tuple:
        items = [item if type(item) in _LEAVES else _filled(item, fill) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return tuple(items)
    elif isinstance(value, BaseModel):
        if not is_external(value):
            _fill_model(value, fill)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            if not fill.left:
                break
            item = getattr(value, field.name, None)
            if type(item) not in _LEAVES:
                filled = _filled(item, fill)
                if filled is not item:
                    object.__setattr__(value, field.name, filled)  # frozen ones too: still being built
    return value
