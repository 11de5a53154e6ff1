"""Key rotation (`pydantic-toast rotate-keys`), under concurrent reads and writes, and what
`inspect` shows of encrypted records; no command ever prints a key."""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID, uuid4

import pytest

from pydantic_toast import ConcurrentUpdateError, KeySet, RecordIntegrityError, StorageValidationError
from pydantic_toast.cli import main, rotate_keys
from pydantic_toast.encryption import envelope_info
from test_encryption import K1, K2, assert_no_secret, raw, stored, vault

MODULE = """
import os
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, KeySet

class Vault(ExternalBaseModel):
    text: str
    n: int = 0
    model_config = ExternalConfigDict(
        storage=os.environ["VAULT_URL"],
        encryption=KeySet.from_env("VAULT_KEYS"),
        encryption_required=os.environ.get("VAULT_REQUIRED", "1") == "1",
    )
"""


def env_keys(**keys: bytes) -> str:
    return ",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in keys.items())


class Deployment:
    """A user's module whose model takes its keys from the environment, redeployed at will."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: str) -> None:
        self.name = f"vault_models_{uuid4().hex[:8]}"
        (tmp_path / f"{self.name}.py").write_text(MODULE)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("VAULT_URL", storage)
        self.monkeypatch = monkeypatch
        self.module: ModuleType | None = None

    def deploy(self, keys: str, *, required: bool = True) -> Any:
        self.monkeypatch.setenv("VAULT_KEYS", keys)
        self.monkeypatch.setenv("VAULT_REQUIRED", "1" if required else "0")
        if self.module is None:
            self.module = importlib.import_module(self.name)
        else:
            self.module = importlib.reload(self.module)
        return self.module.Vault

    @property
    def model(self) -> str:
        return f"{self.name}:Vault"

    def cleanup(self) -> None:
        sys.modules.pop(self.name, None)


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage_url: str) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path, monkeypatch, storage_url)
    yield deployed
    deployed.cleanup()


def key_ids(storage: str, ids: list[UUID]) -> list[str | None]:
    async def read() -> list[str | None]:
        records = [await stored(storage, id) for id in ids]
        return [None if (info := envelope_info(r.payload)) is None else info.key_id for r in records]

    return asyncio.run(read())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert_no_secret(captured.out + captured.err)
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- inspect


def test_inspect_shows_encryption_metadata_never_plaintext(
    deployment: Deployment, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = deployment.deploy(env_keys(k1=K1))
    reference = model(text="the secret text", n=3).model_dump()
    code, out, _ = run(capsys, "inspect", storage_url, reference["id"], "--class", "Vault")
    assert code == 0
    shown = json.loads(out)
    assert shown["encoding"] == "json+aesgcm"
    assert shown["encryption"]["algorithm"] == "AES-256-GCM"
    assert shown["encryption"]["key_id"] == "k1"
    assert shown["encryption"]["nonce_bytes"] == 12
    assert "the secret text" not in out
    assert "--decrypt" in shown["data"]

    code, out, _ = run(
        capsys,
        "inspect",
        storage_url,
        reference["id"],
        "--class",
        "Vault",
        "--decrypt",
        "--model",
        deployment.model,
    )
    assert code == 0
    assert json.loads(out)["data"] == {"text": "the secret text", "n": 3}

    code, _, err = run(capsys, "inspect", storage_url, reference["id"], "--decrypt")
    assert code == 2
    assert "--decrypt needs --model" in err

    deployment.deploy(env_keys(k1=K2))  # the wrong key under the right id
    code, out, err = run(
        capsys,
        "inspect",
        storage_url,
        reference["id"],
        "--class",
        "Vault",
        "--decrypt",
        "--model",
        deployment.model,
    )
    assert code == 1
    assert out == ""
    assert "failed authentication under key id 'k1'" in err
    assert "the secret text" not in err


# ---------------------------------------------------------------------------- rotate-keys


def test_rotate_keys_re_encrypts_everything_and_resumes(
    deployment: Deployment, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old_model = deployment.deploy(env_keys(k1=K1))
    ids = [UUID(old_model(text=f"record {i}", n=i).model_dump()["id"]) for i in range(25)]
    assert set(key_ids(storage_url, ids)) == {"k1"}

    new_model = deployment.deploy(env_keys(k2=K2, k1=K1))
    ids.append(UUID(new_model(text="written after the new key", n=99).model_dump()["id"]))
    code, out, err = run(
        capsys, "rotate-keys", storage_url, "--model", deployment.model, "--batch-size", "10"
    )
    assert code == 0, err
    assert "re-encrypted 25 Vault records under key 'k2'; 1 already were" in out
    assert "Verified 26: 0 not under key 'k2', 0 failing authentication" in out
    assert set(key_ids(storage_url, ids)) == {"k2"}

    code, out, _ = run(capsys, "rotate-keys", storage_url, "--model", deployment.model)
    assert code == 0
    assert "re-encrypted 0 Vault records under key 'k2'; 26 already were" in out

    # The old key can go now: every record reads with the new one alone.
    only_new = deployment.deploy(env_keys(k2=K2))
    assert [only_new.model_validate({"class_name": "Vault", "id": str(id)}).n for id in ids] == [
        *range(25),
        99,
    ]


async def test_an_interrupted_rotation_resumes(storage_url: str) -> None:
    old_model = vault(storage_url, KeySet({"k1": K1}))
    references = await old_model.save_many([old_model(text=str(i), n=i) for i in range(12)])
    new_model = vault(storage_url, KeySet({"k2": K2, "k1": K1}, current="k2"))
    out, err = io.StringIO(), io.StringIO()
    assert await rotate_keys(storage_url, new_model, batch=5, out=out, err=err, stop_after_batches=1) == 3
    assert 0 < key_ids_async(await _ids(storage_url, references)).count("k2") < 12
    assert await rotate_keys(storage_url, new_model, batch=5, out=out, err=err) == 0
    assert "Verified 12: 0 not under key 'k2'" in out.getvalue()
    assert key_ids_async(await _ids(storage_url, references)) == ["k2"] * 12


async def _ids(storage: str, references: list[Any]) -> list[Any]:
    return [await stored(storage, reference.id) for reference in references]


def key_ids_async(records: list[Any]) -> list[str | None]:
    return [None if (info := envelope_info(r.payload)) is None else info.key_id for r in records]


async def test_rotation_never_launders_a_refused_record(storage_url: str) -> None:
    planted = await vault(storage_url, None)(text="planted in plain text").save()
    keys = KeySet({"k2": K2, "k1": K1}, current="k2")
    tampered = await vault(storage_url, KeySet({"k1": K2}))(text="under a key nobody has").save()
    good = await vault(storage_url, KeySet({"k1": K1}))(text="fine").save()
    model = vault(storage_url, keys)
    out, err = io.StringIO(), io.StringIO()
    assert await rotate_keys(storage_url, model, batch=100, out=out, err=err) == 1
    text = out.getvalue()
    assert "2 refused and left untouched" in text
    assert str(planted.id) in text
    assert str(tampered.id) in text
    assert "planted in plain text" not in text + err.getvalue()
    assert (await stored(storage_url, planted.id)).encoding == "json"
    assert key_ids_async([await stored(storage_url, good.id)]) == ["k2"]
    for reference in (planted, tampered):
        with pytest.raises(RecordIntegrityError):
            await model.load(reference)

    # While an existing store is being encrypted, plain records are read and encrypted.
    migrating = vault(storage_url, keys, encryption_required=False)
    out = io.StringIO()
    assert await rotate_keys(storage_url, migrating, batch=100, out=out, err=err) == 1  # the tampered one
    assert "1 refused" in out.getvalue()
    assert str(tampered.id) in out.getvalue()
    assert (await stored(storage_url, planted.id)).encoding == "json+aesgcm"
    assert (await model.load(planted)).text == "planted in plain text"


def test_rotate_keys_usage_errors(
    deployment: Deployment, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.deploy(env_keys(k1=K1))
    code, _, err = run(capsys, "rotate-keys", "memory://elsewhere", "--model", deployment.model)
    assert code == 2
    assert "pass the model's own storage URL" in err
    code, _, err = run(capsys, "rotate-keys", storage_url, "--model", f"{deployment.name}:Missing")
    assert code == 2
    assert "not an ExternalBaseModel" in err


async def test_rotate_keys_needs_encryption(memory_url: str) -> None:
    with pytest.raises(StorageValidationError, match="has no encryption configured"):
        await rotate_keys(memory_url, vault(memory_url, None), batch=10, out=io.StringIO(), err=io.StringIO())


async def test_rotation_under_concurrent_reads_and_writes(storage_url: str) -> None:
    """Readers never fail, writers lose nothing, and every record ends under the new key."""
    old_model = vault(storage_url, KeySet({"k1": K1}), optimistic_concurrency=True)
    references = await old_model.save_many([old_model(text=str(i)) for i in range(40)])
    new_model = vault(storage_url, KeySet({"k2": K2, "k1": K1}, current="k2"), optimistic_concurrency=True)
    expected = {reference.id: 0 for reference in references}
    rotation_done = threading.Event()
    counts = {"reads": 0, "writes": 0, "conflicts": 0}

    # Readers and writers are other threads (the sync API, through the library's I/O thread), so
    # they truly run alongside the rotation on every backend, the in-process one included.
    def writer() -> None:
        rounds = 0
        while not rotation_done.is_set() or rounds < 2:
            rounds += 1
            # Half the records only: the other half is left for the rotation to rewrite.
            for reference in references[rounds % 2 :: 4]:
                while True:
                    model = new_model.model_validate(reference.model_dump())
                    model.n += 1
                    try:
                        model.model_dump()
                    except ConcurrentUpdateError:
                        counts["conflicts"] += 1
                        continue
                    expected[reference.id] = model.n
                    counts["writes"] += 1
                    break

    def reader() -> None:
        while not rotation_done.is_set() or counts["reads"] < 2:
            for reference in references:
                new_model.model_validate(reference.model_dump())  # never fails: old or new key
            counts["reads"] += 1

    out = io.StringIO()
    threads = [asyncio.create_task(asyncio.to_thread(writer)), asyncio.create_task(asyncio.to_thread(reader))]
    try:
        await asyncio.sleep(0.01)
        code = await rotate_keys(storage_url, new_model, batch=4, out=out, err=io.StringIO())
    finally:
        rotation_done.set()
        await asyncio.gather(*threads)
    assert code == 0, out.getvalue()
    assert counts["reads"] >= 2
    assert counts["writes"] > 0
    rotated = int(out.getvalue().split("re-encrypted ", 1)[1].split(" ", 1)[0])
    assert rotated >= 20
    only_new = vault(storage_url, KeySet({"k2": K2}), optimistic_concurrency=True)
    loaded = await only_new.load_many(references)
    assert {reference.id: model.n for reference, model in zip(references, loaded, strict=True)} == expected
    assert [model.text for model in loaded] == [str(i) for i in range(40)]


async def test_copy_to_another_store_keeps_records_readable(
    memory_url: str, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = KeySet({"k1": K1})
    reference = await vault(memory_url, keys, compression="zlib")(text="x" * 2000).save()
    code = await asyncio.to_thread(
        main, ["copy", memory_url, sqlite_url, "--state-file", str(tmp_path / "state.json")]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert_no_secret(captured.out + captured.err)
    async with raw(sqlite_url) as backend:
        [record] = await backend.load_records([(reference.id, "Vault")])
    assert record is not None
    assert record.encoding == "json+zlib+aesgcm"
    assert (await vault(sqlite_url, keys).load(reference)).text == "x" * 2000
