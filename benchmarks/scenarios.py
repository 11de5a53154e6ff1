"""The scenarios: what is timed, against what, with which target.

Every scenario runs on every backend that is available (peers on Redis only). Each scenario's
`build` prepares its data (records to load exist before timing starts, and a round trip through
every contender is checked to return the right model) and returns the contenders; the first is
always pydantic-toast, and a ratio is reported against each of the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID, uuid4

from baselines import Baseline, LoopThread
from bench_models import FLAT10, WIDE100, ModelSet, payload_values, values_for
from bench_toast import toast_dump, toast_load, toast_redump_unchanged
from peers import Peer
from pydantic import BaseModel
from timing import Contender

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalReference, KeySet

__all__ = ["Counts", "Env", "Scenario", "scenarios"]

SINGLE_TARGET = 1.10
BATCH_TARGET = 1.10
NESTED_TARGET = 1.5
PEER_TARGET = 1.0  # faster than every peer


@dataclass(frozen=True, slots=True)
class Counts:
    """Sizes and repetitions; smoke mode shrinks all of them."""

    batch: int = 1000
    children: int = 100
    tasks: int = 100
    payloads: tuple[int, ...] = (1_000, 100_000, 5_000_000)
    single_iterations: int = 40
    batch_iterations: int = 3
    payload_iterations: tuple[int, ...] = (40, 8, 1)

    @classmethod
    def smoke(cls) -> Counts:
        return cls(
            batch=20,
            children=5,
            tasks=10,
            payloads=(1_000, 10_000, 100_000),
            single_iterations=2,
            batch_iterations=1,
            payload_iterations=(1, 1, 1),
        )


@dataclass(slots=True)
class Env:
    """What the scenarios of one backend work with, on the running loop."""

    backend: str
    models: ModelSet
    baseline: Baseline
    bridge: LoopThread
    bridge_baseline: Baseline
    peers: list[Peer]
    counts: Counts
    seed: int = 0
    scenario: str = ""
    peer_failures: dict[str, str] = field(default_factory=dict)

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed


Mode = Literal["async", "sync"]
Build = Callable[[Env], Awaitable[list[Contender]]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    group: str
    ops: int
    iterations: int
    build: Build
    targets: dict[str, float] = field(default_factory=dict)
    mode: Mode = "async"
    note: str = ""


def _check(expected: BaseModel, loaded: BaseModel, who: str) -> None:
    """Refuse to time a contender that does not give back what it stored."""
    if expected.model_dump(context={"pydantic_toast": "inline"}) != loaded.model_dump(
        context={"pydantic_toast": "inline"}
    ):
        raise AssertionError(f"{who} loaded different data than it saved")


def _pair(
    toast_cls: type[ExternalBaseModel], plain_cls: type[BaseModel], values: dict[str, Any]
) -> tuple[ExternalBaseModel, BaseModel]:
    """The same data as a pydantic-toast model and as its plain twin."""
    return toast_cls(**values), plain_cls(**values)


# ---------------------------------------------------------------------------- single operations


def _classes(
    env: Env, kind: str
) -> tuple[type[ExternalBaseModel], type[BaseModel], Callable[[int], dict[str, Any]]]:
    models = env.models
    if kind == "10":
        return models.flat10, models.plain_flat10, lambda seed: values_for(FLAT10, seed)
    if kind == "100":
        return models.wide100, models.plain_wide100, lambda seed: values_for(WIDE100, seed)
    size = int(kind)
    return models.payload, models.plain_payload, lambda seed: payload_values(size, seed)


def _single_save(kind: str, with_peers: bool) -> Build:
    async def build(env: Env) -> list[Contender]:
        toast_cls, plain_cls, make = _classes(env, kind)
        values = make(env.next_seed())
        model, plain = _pair(toast_cls, plain_cls, values)
        plain_id = uuid4()
        contenders = [
            Contender("pydantic-toast", "toast", model.save),
            Contender("hand-written", "baseline", lambda: env.baseline.save(plain_id, plain)),
        ]
        for peer in _peers(env, with_peers):
            instance = peer.make(values)
            if await _works(env, peer, peer.save(instance)):
                contenders.append(Contender(peer.name, "peer", _bind(peer.save, instance)))
        return contenders

    return build


def _single_load(kind: str, with_peers: bool) -> Build:
    async def build(env: Env) -> list[Contender]:
        toast_cls, plain_cls, make = _classes(env, kind)
        values = make(env.next_seed())
        model, plain = _pair(toast_cls, plain_cls, values)
        reference = await model.save()
        _check(model, await toast_cls.load(reference), "pydantic-toast")
        plain_id = uuid4()
        await env.baseline.save(plain_id, plain)
        _check(plain, await env.baseline.load(plain_id, plain_cls), "hand-written")
        contenders = [
            Contender("pydantic-toast", "toast", _bind(toast_cls.load, reference)),
            Contender("hand-written", "baseline", lambda: env.baseline.load(plain_id, plain_cls)),
        ]
        for peer in _peers(env, with_peers):
            instance = peer.make(values)
            key = peer.key_of(instance)
            if await _works(env, peer, _peer_round_trip(peer, instance, plain)):
                contenders.append(Contender(peer.name, "peer", _bind(peer.load, key)))
        return contenders

    return build


# ---------------------------------------------------------------------------- encryption

# A fixed key: benchmark data only. The cost measured is AES-256-GCM's, not the key's.
_BENCH_KEYS = KeySet({"bench": bytes(range(32))})


def _encrypted_payload(env: Env) -> type[ExternalBaseModel]:
    """The payload model again, encrypted (same module and name on each call: a redefinition)."""
    namespace: dict[str, Any] = {
        "__annotations__": {"title": str, "body": str},
        "__module__": __name__,
        "__qualname__": "EncryptedPayload",
        "model_config": ExternalConfigDict(
            storage=env.models.payload.__toast_settings__.url.raw, encryption=_BENCH_KEYS
        ),
    }
    return type("EncryptedPayload", (ExternalBaseModel,), namespace)


def _encryption(operation: str, size: int) -> Build:
    """pydantic-toast with encryption against pydantic-toast without: the ratio is its cost."""

    async def build(env: Env) -> list[Contender]:
        encrypted_cls = _encrypted_payload(env)
        plain_cls = env.models.payload
        values = payload_values(size, env.next_seed())
        encrypted, plain = encrypted_cls(**values), plain_cls(**values)
        if operation == "save":
            return [
                Contender("pydantic-toast", "toast", encrypted.save),
                Contender("unencrypted", "baseline", plain.save),
            ]
        encrypted_ref, plain_ref = await encrypted.save(), await plain.save()
        _check(encrypted, await encrypted_cls.load(encrypted_ref), "pydantic-toast encrypted")
        return [
            Contender("pydantic-toast", "toast", _bind(encrypted_cls.load, encrypted_ref)),
            Contender("unencrypted", "baseline", _bind(plain_cls.load, plain_ref)),
        ]

    return build


def _peers(env: Env, wanted: bool) -> list[Peer]:
    return env.peers if wanted else []


async def _works(env: Env, peer: Peer, attempt: Awaitable[object]) -> bool:
    """Run a peer's first call; a peer that fails is reported and left out, not fatal."""
    try:
        await attempt
    except Exception as exc:
        env.peer_failures[f"{peer.name} ({env.scenario})"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        return False
    return True


async def _peer_round_trip(peer: Peer, instance: Any, plain: BaseModel) -> None:
    await peer.save(instance)
    loaded = await peer.load(peer.key_of(instance))
    _check(plain, type(plain).model_validate(dict(loaded.__dict__)), peer.name)


def _bind(function: Callable[[Any], Awaitable[Any]], argument: Any) -> Callable[[], Awaitable[Any]]:
    return lambda: function(argument)


# ---------------------------------------------------------------------------- batches


def _batch_save(with_peers: bool) -> Build:
    async def build(env: Env) -> list[Contender]:
        count = env.counts.batch
        rows = [values_for(FLAT10, env.next_seed()) for _ in range(count)]
        models = [env.models.flat10(**row) for row in rows]
        items: list[tuple[UUID, BaseModel]] = [(uuid4(), env.models.plain_flat10(**row)) for row in rows]
        flat10 = env.models.flat10
        contenders = [
            Contender("pydantic-toast", "toast", lambda: flat10.save_many(models)),
            Contender("hand-written", "baseline", lambda: env.baseline.save_many(items)),
        ]
        for peer in _peers(env, with_peers):
            instances = [peer.make(row) for row in rows]
            if await _works(env, peer, peer.save_many(instances)):
                contenders.append(Contender(peer.name, "peer", _bind(peer.save_many, instances)))
        return contenders

    return build


def _batch_load(with_peers: bool) -> Build:
    async def build(env: Env) -> list[Contender]:
        count = env.counts.batch
        rows = [values_for(FLAT10, env.next_seed()) for _ in range(count)]
        flat10, plain_flat10 = env.models.flat10, env.models.plain_flat10
        models = [flat10(**row) for row in rows]
        references = await flat10.save_many(models)
        loaded = await flat10.load_many(references)
        _check(models[-1], loaded[-1], "pydantic-toast")
        items: list[tuple[UUID, BaseModel]] = [(uuid4(), plain_flat10(**row)) for row in rows]
        await env.baseline.save_many(items)
        ids = [id for id, _ in items]
        _check(items[-1][1], (await env.baseline.load_many(ids, plain_flat10))[-1], "hand-written")
        contenders = [
            Contender("pydantic-toast", "toast", lambda: flat10.load_many(references)),
            Contender("hand-written", "baseline", lambda: env.baseline.load_many(ids, plain_flat10)),
        ]
        for peer in _peers(env, with_peers):
            instances = [peer.make(row) for row in rows]
            keys = [peer.key_of(instance) for instance in instances]
            if await _works(env, peer, peer.save_many(instances)) and await _works(
                env, peer, peer.load_many(keys)
            ):
                contenders.append(Contender(peer.name, "peer", _bind(peer.load_many, keys)))
        return contenders

    return build


# ---------------------------------------------------------------------------- nesting


def _children(env: Env, count: int) -> list[ExternalBaseModel]:
    child = env.models.child
    return [child(name=f"child {n}", value=n, tags=["a", "b"]) for n in range(count)]


async def _nested_save(env: Env) -> list[Contender]:
    count = env.counts.children
    parent = env.models.parent(title="parent", children=_children(env, count))
    flat = _children(env, count + 1)
    child = env.models.child
    return [
        Contender("pydantic-toast", "toast", parent.save),
        Contender("toast flat save_many", "baseline", lambda: child.save_many(flat)),
    ]


async def _nested_load(env: Env) -> list[Contender]:
    count = env.counts.children
    parent_cls, child = env.models.parent, env.models.child
    parent = parent_cls(title="parent", children=_children(env, count))
    reference = await parent.save()
    _check(parent, await parent_cls.load(reference), "pydantic-toast nested")
    references = await child.save_many(_children(env, count + 1))
    return [
        Contender("pydantic-toast", "toast", _bind(parent_cls.load, reference)),
        Contender("toast flat load_many", "baseline", lambda: child.load_many(references)),
    ]


# ---------------------------------------------------------------------------- concurrency


async def _concurrent(env: Env) -> list[Contender]:
    half = env.counts.tasks // 2
    flat10, plain_flat10 = env.models.flat10, env.models.plain_flat10
    rows = [values_for(FLAT10, env.next_seed()) for _ in range(half)]
    writers = [flat10(**row) for row in rows]
    readers: list[ExternalReference] = [await flat10(**row).save() for row in rows]
    plain_writers = [(uuid4(), plain_flat10(**row)) for row in rows]
    plain_readers = [uuid4() for _ in rows]
    for id, row in zip(plain_readers, rows, strict=True):
        await env.baseline.save(id, plain_flat10(**row))

    async def toast() -> None:
        await asyncio.gather(*(model.save() for model in writers), *(flat10.load(ref) for ref in readers))

    async def hand_written() -> None:
        await asyncio.gather(
            *(env.baseline.save(id, model) for id, model in plain_writers),
            *(env.baseline.load(id, plain_flat10) for id in plain_readers),
        )

    return [Contender("pydantic-toast", "toast", toast), Contender("hand-written", "baseline", hand_written)]


# ---------------------------------------------------------------------------- sync API


SYNC_IN_LOOP_TARGET = 2.0  # issue 17: a sync dump inside a running loop vs an async raw SET
ASYNC_RAW = "async raw write"


def _sync_in_loop(operation: str) -> Build:
    """`model_dump()` / `model_validate(ref)` called from a coroutine (blocking the loop).

    A changed model's dump is also timed against the raw write a user would make instead: the
    async baseline awaited on the running loop (what the target speaks of) and, where the driver
    has one, its sync client called right there."""

    async def build(env: Env) -> list[Contender]:
        toast, hand = _sync_calls(env, operation)

        async def toast_call() -> None:
            toast()

        async def hand_call() -> None:
            hand()

        contenders = [
            Contender("pydantic-toast", "toast", toast_call),
            Contender("hand-written", "baseline", hand_call),
        ]
        if operation == "dump":
            plain = env.models.plain_flat10(**values_for(FLAT10, env.next_seed()))
            plain_id = uuid4()
            baseline = env.baseline
            await baseline.save(plain_id, plain)

            async def async_raw() -> None:
                await baseline.save(plain_id, plain)

            contenders.append(Contender(ASYNC_RAW, "baseline", async_raw))
            save_sync = getattr(baseline, "save_sync", None)
            if save_sync is not None:
                save_sync(plain_id, plain)

                async def sync_raw() -> None:
                    save_sync(plain_id, plain)

                contenders.append(Contender("sync raw write", "baseline", sync_raw))
        return contenders

    return build


def _sync_calls(env: Env, operation: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """The sync call of each contender: toast's own bridge vs a hand-written loop thread."""
    values = values_for(FLAT10, env.next_seed())
    model, plain = _pair(env.models.flat10, env.models.plain_flat10, values)
    reference = model.model_dump()
    plain_id = uuid4()
    bridge, baseline = env.bridge, env.bridge_baseline
    bridge.run(baseline.save(plain_id, plain))
    if operation == "dump":
        # A changed model, so every dump writes (an unchanged one writes nothing: "unchanged").
        def dump_changed() -> object:
            model.visits += 1  # type: ignore[attr-defined]
            return model.model_dump()

        return dump_changed, lambda: bridge.run(baseline.save(plain_id, plain))
    if operation == "unchanged":
        return model.model_dump, lambda: bridge.run(baseline.save(plain_id, plain))
    flat10, plain_cls = env.models.flat10, env.models.plain_flat10
    _check(model, flat10.model_validate(reference), "pydantic-toast sync")
    return (lambda: flat10.model_validate(reference)), (
        lambda: bridge.run(baseline.load(plain_id, plain_cls))
    )


def sync_plain_contenders(env: Env, operation: str) -> list[Contender]:
    """For scenarios in mode "sync": called with no event loop running in this thread."""
    toast, hand = _sync_calls(env, operation)
    return [Contender("pydantic-toast", "toast", toast), Contender("hand-written", "baseline", hand)]


async def _no_build(env: Env) -> list[Contender]:
    raise AssertionError("sync scenarios are built by sync_plain_contenders")


# ---------------------------------------------------------------------------- the list


def _size(size: int) -> str:
    if size >= 1_000_000:
        return f"{size // 1_000_000} MB"
    if size >= 1_000:
        return f"{size // 1_000} KB"
    return f"{size} B"


def scenarios(counts: Counts, *, peers: bool) -> list[Scenario]:
    """Every scenario for one backend; `peers` adds the peer contenders where they apply."""
    single = counts.single_iterations
    batch_iterations = counts.batch_iterations
    targets = {"hand-written": SINGLE_TARGET}
    batch_targets = {"hand-written": BATCH_TARGET}
    result = [
        Scenario("save 10 fields", "single", 1, single, _single_save("10", peers), targets),
        Scenario("load 10 fields", "single", 1, single, _single_load("10", peers), targets),
        Scenario("save 100 fields", "single", 1, single, _single_save("100", False), targets),
        Scenario("load 100 fields", "single", 1, single, _single_load("100", False), targets),
        Scenario(
            f"save_many {counts.batch}",
            "batch",
            counts.batch,
            batch_iterations,
            _batch_save(peers),
            batch_targets,
        ),
        Scenario(
            f"load_many {counts.batch}",
            "batch",
            counts.batch,
            batch_iterations,
            _batch_load(peers),
            batch_targets,
        ),
        Scenario(
            f"nested save 1+{counts.children}",
            "nested",
            counts.children + 1,
            max(1, single // 4),
            _nested_save,
            {"toast flat save_many": NESTED_TARGET},
            note=f"vs pydantic-toast save_many of {counts.children + 1} flat models",
        ),
        Scenario(
            f"nested load 1+{counts.children}",
            "nested",
            counts.children + 1,
            max(1, single // 4),
            _nested_load,
            {"toast flat load_many": NESTED_TARGET},
            note=f"vs pydantic-toast load_many of {counts.children + 1} flat models",
        ),
        Scenario(
            f"{counts.tasks} tasks save+load",
            "concurrent",
            counts.tasks,
            max(1, single // 4),
            _concurrent,
            targets,
            note="half the tasks save, half load, all at once",
        ),
    ]
    for size, iterations in zip(counts.payloads, counts.payload_iterations, strict=True):
        label = _size(size)
        result.append(
            Scenario(f"save {label}", "payload", 1, iterations, _single_save(str(size), False), targets)
        )
        result.append(
            Scenario(f"load {label}", "payload", 1, iterations, _single_load(str(size), False), targets)
        )
    encryption_note = "no target: the ratio is the cost of AES-256-GCM (vs the same model unencrypted)"
    for size, iterations in zip(counts.payloads, counts.payload_iterations, strict=True):
        label = _size(size)
        for operation in ("save", "load"):
            result.append(
                Scenario(
                    f"encrypted {operation} {label}",
                    "encryption",
                    1,
                    iterations,
                    _encryption(operation, size),
                    note=encryption_note,
                )
            )
    toast_size = counts.payloads[1]
    toast_label = _size(toast_size)
    hand_note = "no target: hand-written = the text saved as its own record under a new UUID"
    result += [
        Scenario(
            f"Toast field dump {toast_label}",
            "toast",
            1,
            single,
            toast_dump(toast_size),
            note=hand_note,
        ),
        Scenario(
            f"Toast value load {toast_label}",
            "toast",
            1,
            single,
            toast_load(toast_size),
            note=hand_note,
        ),
        Scenario(
            f"Toast field re-dump unchanged {toast_label}",
            "toast",
            1,
            single,
            toast_redump_unchanged(toast_size),
            note="0 records written (checked before timing); hand-written = writing it again",
        ),
    ]
    sync_note = "no target: hand-written = the async baseline through a hand-made loop thread"
    result += [
        Scenario("sync dump (plain code)", "sync", 1, single, _no_build, mode="sync", note=sync_note),
        Scenario("sync validate (plain code)", "sync", 1, single, _no_build, mode="sync", note=sync_note),
        Scenario(
            "sync dump (in loop)",
            "sync",
            1,
            single,
            _sync_in_loop("dump"),
            {ASYNC_RAW: SYNC_IN_LOOP_TARGET},
            note="target vs the async raw write awaited on the loop; hand-written = through a loop thread",
        ),
        Scenario("sync validate (in loop)", "sync", 1, single, _sync_in_loop("validate"), note=sync_note),
        Scenario(
            "sync dump unchanged (in loop)",
            "sync",
            1,
            single,
            _sync_in_loop("unchanged"),
            note="an unchanged model's dump writes nothing; hand-written = writing it again",
        ),
    ]
    return result


def peer_target_for(contenders: Sequence[Contender]) -> dict[str, float]:
    """Faster than every peer that runs."""
    return {c.name: PEER_TARGET for c in contenders if c.kind == "peer"}
