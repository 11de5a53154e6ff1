"""Encryption at rest: key sets, the aesgcm codec step, records bound to their identity, the
required policy, and keys that never show. Rotation and the command line: test_encryption_cli.py."""

from __future__ import annotations

import base64
import copy
import logging
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    KeySet,
    MissingDependencyError,
    RecordIntegrityError,
    StorageValidationError,
    StoredDataError,
    codecs,
    upgrade,
)
from pydantic_toast._record_state import state_of
from pydantic_toast.backends.base import StorageBackend, StoredRecord
from pydantic_toast.encryption import envelope_info
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
LONG = "a sensitive transcript that compresses well " * 40


def secret_forms(key: bytes) -> list[str]:
    """Every way a key could leak into text."""
    return [repr(key), key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode()]


def assert_no_secret(text: str, *keys: bytes) -> None:
    for key in keys or (K1, K2):
        for form in secret_forms(key):
            assert form not in text


def vault(storage: str, keys: KeySet | None, **config: Any) -> Any:
    """The same class (one qualified name) with another configuration, as after a redeploy."""

    class Vault(ExternalBaseModel):
        text: str
        n: int = 0
        model_config = cast(ExternalConfigDict, {"storage": storage, "encryption": keys, **config})

        if config.get("schema_version", 1) == 2:

            @upgrade(from_version=1)
            @staticmethod
            def _to_2(data: dict[str, Any]) -> dict[str, Any]:
                return {**data, "n": 2}

    return Vault


@asynccontextmanager
async def raw(storage: str) -> AsyncIterator[StorageBackend]:
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.disconnect()


async def stored(storage: str, id: UUID, class_name: str = "Vault") -> StoredRecord:
    async with raw(storage) as backend:
        [record] = await backend.load_records([(id, class_name)])
    assert record is not None
    return record


async def put(storage: str, record: StoredRecord) -> None:
    async with raw(storage) as backend:
        await backend.save_records([record])


async def refused(model: Any, id: UUID) -> RecordIntegrityError:
    with pytest.raises(RecordIntegrityError) as caught:
        await model.load(id)
    error = caught.value
    assert error.id == id
    assert str(id) in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None or not isinstance(error.__context__, RecordIntegrityError)
    assert_no_secret(str(error))
    return error


# ---------------------------------------------------------------------------- round trips


async def test_round_trip_stores_ciphertext_only(storage_url: str) -> None:
    model = vault(storage_url, KeySet({"k1": K1}))
    reference = await model(text="top secret", n=7).save()
    record = await stored(storage_url, reference.id)
    assert record.encoding == "json+aesgcm"
    assert b"top secret" not in record.payload
    info = envelope_info(record.payload)
    assert info is not None
    assert info.key_id == "k1"
    loaded = await model.load(reference)
    assert (loaded.text, loaded.n) == ("top secret", 7)
    # A second write of the same data uses a fresh nonce: equal plaintexts do not look equal.
    loaded.n = 8
    await loaded.save()
    again = await stored(storage_url, reference.id)
    assert again.payload[:20] != record.payload[:20]
    assert (await model.load(reference)).n == 8


async def test_sync_api_round_trip(storage_url: str) -> None:
    model = vault(storage_url, KeySet({"k1": K1}))
    reference = model(text="sync").model_dump()
    assert model.model_validate(reference).text == "sync"


async def test_compression_then_encryption(storage_url: str) -> None:
    model = vault(storage_url, KeySet({"k1": K1}), compression="zlib")
    big = await model(text=LONG).save()
    small = await model(text="short").save()
    big_record = await stored(storage_url, big.id)
    assert big_record.encoding == "json+zlib+aesgcm"
    assert len(big_record.payload) < len(LONG) // 4  # compressed before encrypting
    assert (await stored(storage_url, small.id)).encoding == "json+aesgcm"
    assert (await model.load(big)).text == LONG
    assert (await model.load(small)).text == "short"


async def test_several_keys_read_while_the_current_one_writes(memory_url: str) -> None:
    old = await vault(memory_url, KeySet({"k1": K1}))(text="old").save()
    model = vault(memory_url, KeySet({"k2": K2, "k1": K1}, current="k2"))
    new = await model(text="new").save()
    assert envelope_info((await stored(memory_url, new.id)).payload).key_id == "k2"  # type: ignore[union-attr]
    assert (await model.load(old)).text == "old"
    assert (await model.load(new)).text == "new"


# ---------------------------------------------------------------------------- refusals


async def test_wrong_key_is_refused(storage_url: str) -> None:
    reference = await vault(storage_url, KeySet({"k1": K1}))(text="x").save()
    other = vault(storage_url, KeySet({"k1": K2}))
    error = await refused(other, reference.id)
    assert error.errors == [{"loc": (), "type": "authentication"}]
    assert "'k1'" in str(error)
    assert "Vault" in str(error)
    assert "AES-256-GCM" in str(error)


async def test_unknown_key_id_is_refused(storage_url: str) -> None:
    reference = await vault(storage_url, KeySet({"k0": K1}))(text="x").save()
    error = await refused(vault(storage_url, KeySet({"k1": K1})), reference.id)
    assert error.errors[0]["type"] == "unknown_key"
    assert "'k0'" in str(error)
    assert "'k1'" in str(error)
    assert "add that key" in str(error)


async def test_record_swapped_between_two_ids_is_refused(storage_url: str) -> None:
    model = vault(storage_url, KeySet({"k1": K1}))
    alice = await model(text="alice's").save()
    bob = await model(text="bob's").save()
    alice_record = await stored(storage_url, alice.id)
    await put(storage_url, replace(alice_record, id=bob.id))
    error = await refused(model, bob.id)
    assert error.errors[0]["type"] == "authentication"
    assert (await model.load(alice)).text == "alice's"


async def test_record_copied_to_another_class_is_refused(storage_url: str) -> None:
    keys = KeySet({"k1": K1})
    reference = await vault(storage_url, keys)(text="vault data").save()
    record = await stored(storage_url, reference.id)

    class Ledger(ExternalBaseModel):
        text: str
        n: int = 0
        model_config = ExternalConfigDict(storage=storage_url, encryption=keys)

    # Same id under another class (stores where an id belongs to one class: the original goes first).
    async with raw(storage_url) as backend:
        await backend.delete(reference.id, "Vault")
        await backend.save_records([replace(record, class_name="Ledger")])
    error = await refused(Ledger, reference.id)
    assert error.class_name == "Ledger"


@pytest.mark.parametrize("where", ["version", "key id", "nonce", "ciphertext", "tag"])
async def test_a_flipped_byte_is_refused(storage_url: str, where: str) -> None:
    model = vault(storage_url, KeySet({"k1": K1}))
    reference = await model(text="do not touch").save()
    record = await stored(storage_url, reference.id)
    position = {"version": 0, "key id": 3, "nonce": 6, "ciphertext": 20, "tag": -1}[where]
    payload = bytearray(record.payload)
    payload[position] ^= 0x01
    await put(storage_url, replace(record, payload=bytes(payload)))
    error = await refused(model, reference.id)
    assert error.errors[0]["type"] in {"authentication", "unknown_key", "unsupported_format"}


@pytest.mark.parametrize("keep", [0, 1, 5, 20, -1])
async def test_a_truncated_payload_is_refused(memory_url: str, keep: int) -> None:
    model = vault(memory_url, KeySet({"k1": K1}))
    reference = await model(text="cut short").save()
    record = await stored(memory_url, reference.id)
    await put(memory_url, replace(record, payload=record.payload[:keep]))
    await refused(model, reference.id)


async def test_relabelled_metadata_is_refused(storage_url: str) -> None:
    """schema_version and the inner encoding are bound too: an upgrade cannot be forced onto
    current data, nor compressed bytes passed off as JSON."""
    model = vault(storage_url, KeySet({"k1": K1}), compression="zlib")
    reference = await model(text=LONG).save()
    record = await stored(storage_url, reference.id)
    await put(storage_url, replace(record, encoding="json+aesgcm"))
    await refused(model, reference.id)
    await put(storage_url, replace(record, schema_version=2))
    v2 = vault(storage_url, KeySet({"k1": K1}), compression="zlib", schema_version=3)
    with pytest.raises(StorageValidationError):  # no upgrade registered: refused before decrypting
        await v2.load(reference)


async def test_plaintext_record_is_refused_where_encryption_is_required(storage_url: str) -> None:
    plain = await vault(storage_url, None)(text="planted").save()
    zipped = await vault(storage_url, None, compression="zlib")(text=LONG).save()
    model = vault(storage_url, KeySet({"k1": K1}))
    for reference in (plain, zipped):
        error = await refused(model, reference.id)
        assert error.errors[0]["type"] == "not_encrypted"
        assert "encryption_required=False" in str(error)
        assert "planted" not in str(error)
    # The migration setting reads them; everything it writes is encrypted.
    migrating = vault(storage_url, KeySet({"k1": K1}), encryption_required=False)
    loaded = await migrating.load(plain)
    assert loaded.text == "planted"
    loaded.n = 1
    await loaded.save()
    assert (await stored(storage_url, plain.id)).encoding == "json+aesgcm"
    assert (await model.load(plain)).n == 1


async def test_encrypted_record_without_keys_is_refused(memory_url: str) -> None:
    reference = await vault(memory_url, KeySet({"k1": K1}))(text="x").save()
    error = await refused(vault(memory_url, None), reference.id)
    assert error.errors[0]["type"] == "no_key"
    with pytest.raises(RecordIntegrityError):
        codecs.decode(await stored(memory_url, reference.id))


async def test_integrity_errors_are_stored_data_errors_and_pickle(memory_url: str) -> None:
    reference = await vault(memory_url, KeySet({"k1": K1}))(text="x").save()
    error = await refused(vault(memory_url, KeySet({"k1": K2})), reference.id)
    assert isinstance(error, StoredDataError)
    assert not isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is RecordIntegrityError
    assert str(again) == str(error)


async def test_nested_encrypted_models_refuse_a_swapped_child(memory_url: str) -> None:
    keys = KeySet({"k1": K1})
    model = vault(memory_url, keys)

    class Folder(ExternalBaseModel):
        items: list[model]  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=memory_url, encryption=keys)

    folder = Folder(items=[model(text="one"), model(text="two")])
    reference = await folder.save()
    loaded = await Folder.load(reference)
    assert [item.text for item in loaded.items] == ["one", "two"]  # type: ignore[attr-defined]
    first, second = (state_of(item).id for item in loaded.items)
    assert first is not None
    assert second is not None
    await put(memory_url, replace(await stored(memory_url, first), id=second))
    with pytest.raises(RecordIntegrityError):
        await Folder.load(reference)


# ---------------------------------------------------------------------------- upgrades and identity


async def test_upgrades_read_older_encrypted_records_and_rewrite_them(storage_url: str) -> None:
    keys = KeySet({"k1": K1})
    reference = await vault(storage_url, keys)(text="v1").save()
    model = vault(storage_url, keys, schema_version=2, upgrade_write_back=True)
    loaded = await model.load(reference)
    assert loaded.n == 2
    record = await stored(storage_url, reference.id)
    assert record.schema_version == 2
    assert record.encoding == "json+aesgcm"
    assert (await model.load(reference)).n == 2


def test_encode_needs_the_identity_with_encryption() -> None:
    pipeline = codecs.pipeline_for({"encryption": KeySet({"k1": K1})})
    assert pipeline is not None
    with pytest.raises(TypeError):
        codecs.encode(pipeline, b'{"text":"x"}')
    id = uuid4()
    payload, encoding = codecs.encode(pipeline, b'{"text":"x"}', class_name="C", id=id, schema_version=1)
    now = datetime.now(UTC)
    record = StoredRecord(id, "C", payload, 1, now, now, encoding=encoding)
    assert codecs.decode(record, pipeline) == b'{"text":"x"}'
    assert codecs.pipeline_for({}) is None


def test_aesgcm_is_reserved_and_last(memory_url: str) -> None:
    class Fake(codecs.Codec):
        name = "aesgcm"

        def encode(self, data: bytes) -> bytes:
            return data

        def decode(self, data: bytes) -> bytes:
            return data

    with pytest.raises(StorageValidationError, match="aesgcm"):
        codecs.register_codec(Fake())
    now = datetime.now(UTC)
    record = StoredRecord(uuid4(), "C", b"x", 1, now, now, encoding="json+aesgcm+zlib")
    with pytest.raises(StoredDataError, match="last step"):
        codecs.decode(record)


# ---------------------------------------------------------------------------- key sets


def test_key_set_never_shows_a_key() -> None:
    keys = KeySet({"k2": K2, "k1": K1}, current="k2")
    assert repr(keys) == "KeySet(ids=['k2', 'k1'], current='k2')"
    assert str(keys) == repr(keys)
    assert keys.current == "k2"
    assert keys.ids == ("k2", "k1")
    assert "k1" in keys
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)
    assert copy.copy(keys) is keys
    assert copy.deepcopy(keys) is keys
    assert_no_secret(repr(vars(type(keys))))


def test_model_config_and_settings_show_no_key(memory_url: str) -> None:
    model = vault(memory_url, KeySet({"k2": K2, "k1": K1}, current="k2"), compression="zlib")
    for text in (repr(model.model_config), repr(model.__toast_settings__), str(model.model_json_schema())):
        assert_no_secret(text)
    assert_no_secret(repr(model(text="x")))


class Pickled(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(
        storage="memory://test-encryption-pickle", encryption=KeySet({"k1": K1})
    )


def test_pickled_instances_and_references_hold_no_key() -> None:
    instance = Pickled(text="x")
    instance.model_dump()
    data = pickle.dumps(instance)
    for form in secret_forms(K1):
        assert form.encode() not in data
    assert K1 not in data
    assert pickle.loads(data).text == "x"


def test_subclass_inherits_the_key_set(memory_url: str) -> None:
    keys = KeySet({"k1": K1})
    model = vault(memory_url, keys)

    class Sub(model):  # type: ignore[valid-type, misc]
        extra: int = 0

    assert Sub.__toast_settings__.codec.encryption is keys
    reference = Sub(text="sub").model_dump()
    assert Sub.model_validate(reference).text == "sub"


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ({}, None, "non-empty"),
        ({"k1": K1[:16]}, None, "must be 32 bytes"),
        ({"k1": "x" * 32}, None, "got str"),
        ({"bad id!": K1}, None, "key id"),
        ({"k1": K1, "k2": K2}, None, "needs current="),
        ({"k1": K1}, "k9", "not one of the key ids"),
    ],
)
def test_key_set_validation(keys: dict[str, Any], current: str | None, message: str) -> None:
    with pytest.raises(StorageValidationError, match=message) as caught:
        KeySet(keys, current=current)
    assert_no_secret(str(caught.value))
    assert "x" * 32 not in str(caught.value)


def test_key_set_from_env() -> None:
    text = f"k2:{base64.b64encode(K2).decode()}, k1:{base64.urlsafe_b64encode(K1).decode()}"
    keys = KeySet.from_env("TOAST_KEYS", environ={"TOAST_KEYS": text})
    assert keys.current == "k2"
    assert keys.ids == ("k2", "k1")
    assert envelope_info(b"") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "is not set"),
        ("   ", "is not set"),
        ("k1", "not 'id:base64key'"),
        ("k1:not*base64", "not valid base64"),
        (f"k1:{base64.b64encode(K1[:31]).decode()}", "must be 32 bytes"),
        (f"k1:{base64.b64encode(K1).decode()},k1:{base64.b64encode(K2).decode()}", "appears twice"),
    ],
)
def test_key_set_from_env_errors_show_no_key(value: str | None, message: str) -> None:
    environ = {} if value is None else {"KEYS": value}
    with pytest.raises(StorageValidationError, match=message) as caught:
        KeySet.from_env("KEYS", environ=environ)
    assert_no_secret(str(caught.value), K1, K2, K1[:31])
    assert "not*base64" not in str(caught.value)


def test_configuration_errors(memory_url: str) -> None:
    with pytest.raises(StorageValidationError, match=r"must be a pydantic_toast\.KeySet") as caught:
        vault(memory_url, K1)  # type: ignore[arg-type]
    assert_no_secret(str(caught.value))
    with pytest.raises(StorageValidationError, match="needs encryption="):
        vault(memory_url, None, encryption_required=True)
    with pytest.raises(StorageValidationError, match="True or False"):
        vault(memory_url, KeySet({"k1": K1}), encryption_required="yes")


def test_missing_cryptography_fails_at_class_definition(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    keys = KeySet({"k1": K1})  # building one needs nothing
    with pytest.raises(MissingDependencyError, match=r"pip install 'pydantic-toast\[encryption\]'") as caught:
        vault(memory_url, keys)
    assert caught.value.extra == "encryption"
    assert caught.value.package == "cryptography"


@pytest.fixture
def log_everything(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


async def test_no_key_in_logs_or_errors_on_any_path(
    storage_url: str, log_everything: pytest.LogCaptureFixture
) -> None:
    keys = KeySet({"k2": K2, "k1": K1}, current="k2")
    model = vault(storage_url, keys, compression="zlib")
    reference = await model(text=LONG).save()
    await model.load(reference)
    messages: list[str] = []
    for wrong in (KeySet({"k2": K1}), KeySet({"k3": K1})):
        try:
            await vault(storage_url, wrong, compression="zlib").load(reference)
        except RecordIntegrityError as exc:
            messages.append(repr(exc) + str(exc) + repr(exc.errors))
    assert len(messages) == 2
    text = "\n".join(messages) + "\n".join(r.getMessage() for r in log_everything.records)
    assert_no_secret(text)
    assert LONG[:30] not in text


def test_cryptography_is_imported_only_by_models_that_encrypt() -> None:
    code = (
        "import sys\n"
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict, KeySet\n"
        "class Plain(ExternalBaseModel):\n"
        "    x: int\n"
        "    model_config = ExternalConfigDict(storage='memory://plain', compression='zlib')\n"
        "keys = KeySet({'k1': bytes(32)})\n"
        "assert 'cryptography' not in sys.modules\n"
        "class Secret(ExternalBaseModel):\n"
        "    x: int\n"
        "    model_config = ExternalConfigDict(storage='memory://secret', encryption=keys)\n"
        "assert 'cryptography' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_planted_encoding_tag_is_not_echoed(memory_url: str) -> None:
    model = vault(memory_url, KeySet({"k1": K1}))
    reference = await model(text="x").save()
    record = await stored(memory_url, reference.id)
    await put(memory_url, replace(record, encoding="json+<planted TEXT>"))
    error = await refused(model, reference.id)
    assert error.errors[0]["type"] == "not_encrypted"
    assert "planted" not in str(error)
