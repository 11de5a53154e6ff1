"""Compression rows: bytes stored and time per save/load of a ~1 MB LLM transcript, per codec.

`python benchmarks/bench_compression.py [--smoke] [--levels]` prints the table alone; `run.py`
prints it after the scenario table. The payload is generated deterministically (a seeded
`random.Random`): a conversation of user, assistant and tool messages with the shape of an
agent's history (prose, code blocks, tool calls with JSON arguments, tool results, token counts),
so its redundancy is that of real transcripts rather than of a repeated string.

Each codec is a model class of its own on one SQLite file; contenders run interleaved (see
timing.py). Saves use `await model.save()`, which always writes (a dump of unchanged data writes
nothing and would measure nothing); loads use `await Model.load(reference)`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from timing import Contender, measure_async

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, codecs
from pydantic_toast._pydantic_internals import inner_serializer
from pydantic_toast.exceptions import MissingDependencyError

__all__ = ["CODECS", "compression_rows", "format_rows", "transcript"]

CODECS: tuple[str | None, ...] = (None, "zlib", "zstd")

_TEXT = (
    "the model returns a reference instead of the full data so that queues and responses stay small "
    "while the record lives in the store we checked the function and it raises when the id is not a "
    "uuid you can retry the request after the connection pool is ready please summarise the document "
    "below and list the open questions then propose a plan with three steps each step names the file "
    "it changes and the test that covers it the user asked for a shorter answer with fewer examples "
    "latency budget throughput batch upsert transaction isolation index schema migration version"
)
_WORDS = tuple(_TEXT.split())
_TOOLS = ("search_docs", "read_file", "run_tests", "query_database", "http_get")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 24))]
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!"))


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 7)))


def _code(rng: random.Random) -> str:
    name = rng.choice(_WORDS)
    lines = [f"def {name}_{rng.randint(0, 999)}(value: int) -> int:"]
    for _ in range(rng.randint(3, 12)):
        lines.append(
            f"    value = value * {rng.randint(2, 97)} + {rng.randint(0, 10_000)}  # {rng.choice(_WORDS)}"
        )
    lines.append("    return value")
    return "```python\n" + "\n".join(lines) + "\n```"


def _message(rng: random.Random, index: int) -> dict[str, Any]:
    role = ("user", "assistant", "assistant", "tool")[index % 4]
    message: dict[str, Any] = {
        "id": f"msg_{rng.getrandbits(64):016x}",
        "role": role,
        "created_at": 1_760_000_000 + index * rng.randint(1, 90),
        "usage": {"input_tokens": rng.randint(10, 9000), "output_tokens": rng.randint(1, 2000)},
    }
    if role == "tool":
        message["tool_call_id"] = f"call_{rng.getrandbits(48):012x}"
        rows = [
            {"id": rng.randint(1, 10**6), "score": round(rng.random(), 4), "title": _sentence(rng)}
            for _ in range(rng.randint(1, 8))
        ]
        message["content"] = {"status": "ok", "rows": rows}
    elif role == "assistant" and rng.random() < 0.4:
        message["content"] = _paragraph(rng)
        message["tool_calls"] = [
            {
                "id": f"call_{rng.getrandbits(48):012x}",
                "name": rng.choice(_TOOLS),
                "arguments": {"query": _sentence(rng), "limit": rng.randint(1, 50)},
            }
        ]
    else:
        parts = [_paragraph(rng) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            parts.insert(rng.randint(0, len(parts)), _code(rng))
        message["content"] = "\n\n".join(parts)
    return message


def transcript(target_bytes: int = 1_000_000, seed: int = 20251223) -> dict[str, Any]:
    """A conversation whose JSON is about `target_bytes` long; the same for the same arguments."""
    import json

    rng = random.Random(seed)
    messages: list[dict[str, Any]] = []
    size = 200
    while size < target_bytes:
        message = _message(rng, len(messages))
        messages.append(message)
        size += len(json.dumps(message)) + 1
    return {"model": "example-model-1", "system": _paragraph(rng), "messages": messages}


class _Transcript(ExternalBaseModel):
    model: str
    system: str
    messages: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Row:
    codec: str
    raw_bytes: int
    stored_bytes: int
    save_median: float
    load_median: float
    note: str = ""


def _model_class(url: str, codec: str | None) -> type[_Transcript]:
    config = cast(ExternalConfigDict, {"storage": url, "compression": codec, "storage_name": f"T_{codec}"})
    return cast(type[_Transcript], type(f"Transcript_{codec}", (_Transcript,), {"model_config": config}))


async def _measure(url: str, data: dict[str, Any], rounds: int, calls: int) -> list[Row]:
    from timing import Samples

    available: list[tuple[str, type[_Transcript], _Transcript]] = []
    notes: dict[str, str] = {}
    for codec in CODECS:
        label = codec or "json"
        try:
            cls = _model_class(url, codec)
        except MissingDependencyError as exc:
            notes[label] = f"not run: {exc}"
            continue
        available.append((label, cls, cls.model_validate(data)))
    references = {label: await model.save() for label, _, model in available}

    def saver(model: _Transcript) -> Any:
        return model.save

    def loader(cls: type[_Transcript], label: str) -> Any:
        return lambda: cls.load(references[label])

    saves = [Contender(label, "toast", saver(model)) for label, _, model in available]
    loads = [Contender(label, "toast", loader(cls, label)) for label, cls, _ in available]
    save_samples: list[Samples] = await measure_async(saves, rounds=rounds, iterations=calls)
    load_samples: list[Samples] = await measure_async(loads, rounds=rounds, iterations=calls)
    raw = len(inner_serializer(available[0][1]).to_json(available[0][2]))
    rows: list[Row] = []
    for (label, cls, _), save, load in zip(available, save_samples, load_samples, strict=True):
        [record] = await _stored(url, cls, references[label])
        rows.append(Row(label, raw, len(record), save.summary().median, load.summary().median))
    rows.extend(Row(label, 0, 0, 0.0, 0.0, note) for label, note in notes.items())
    return rows


async def _stored(url: str, cls: type[_Transcript], reference: Any) -> list[bytes]:
    from pydantic_toast.runtime import execute

    settings = cls.__toast_settings__
    records = await execute(
        settings.url, 30.0, lambda backend: backend.load_records([(reference.id, reference.class_name)])
    )
    return [record.payload for record in records if record is not None]


def compression_rows(*, smoke: bool = False) -> list[Row]:
    """Measure every codec on a fresh SQLite file (smoke: 100 KB payload, 2 rounds)."""
    data = transcript(100_000 if smoke else 1_000_000)
    rounds, calls = (2, 2) if smoke else (7, 3)
    with tempfile.TemporaryDirectory(prefix="pydantic-toast-compression-") as directory:
        url = f"sqlite:///{Path(directory) / 'bench.db'}"

        async def main() -> list[Row]:
            try:
                return await _measure(url, data, rounds, calls)
            finally:
                await pydantic_toast.aclose()

        return asyncio.run(main())


def format_rows(rows: list[Row]) -> str:
    lines = [
        "compression (SQLite, LLM transcript)",
        f"{'codec':<8} {'raw bytes':>11} {'stored bytes':>13} {'ratio':>7} {'save':>10} {'load':>10}",
    ]
    base = next((row for row in rows if row.codec == "json" and not row.note), None)
    for row in rows:
        if row.note:
            lines.append(f"{row.codec:<8} {row.note}")
            continue
        save = f"{row.save_median * 1e3:.2f} ms"
        load = f"{row.load_median * 1e3:.2f} ms"
        if base is not None and row is not base:
            save += f" ({row.save_median / base.save_median:.2f}x)"
            load += f" ({row.load_median / base.load_median:.2f}x)"
        ratio = row.stored_bytes / row.raw_bytes if row.raw_bytes else 0.0
        lines.append(
            f"{row.codec:<8} {row.raw_bytes:>11} {row.stored_bytes:>13} {ratio:>7.3f} {save:>10} {load:>10}"
        )
    return "\n".join(lines)


def _levels(data: bytes) -> str:
    """zstd levels next to zlib's default, on the codec alone (no storage): the level's reason."""
    zstd = codecs._zstd()
    import zlib

    lines = [f"{'codec':<10} {'bytes':>9} {'ratio':>7} {'compress':>10} {'decompress':>11}"]
    candidates: list[tuple[str, Any, Any]] = [("zlib-6", zlib.compress, zlib.decompress)]
    for level in (1, 3, 6, 9, 19):
        candidates.append((f"zstd-{level}", lambda d, lv=level: zstd.compress(d, level=lv), zstd.decompress))
    for name, pack, unpack in candidates:
        packed = pack(data)
        started = time.perf_counter()
        for _ in range(5):
            pack(data)
        compress = (time.perf_counter() - started) / 5
        started = time.perf_counter()
        for _ in range(5):
            unpack(packed)
        decompress = (time.perf_counter() - started) / 5
        lines.append(
            f"{name:<10} {len(packed):>9} {len(packed) / len(data):>7.3f} {compress * 1e3:>8.2f}ms "
            f"{decompress * 1e3:>9.2f}ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="100 KB payload, 2 rounds")
    parser.add_argument("--levels", action="store_true", help="also compare zstd levels on the codec alone")
    args = parser.parse_args(argv)
    print(format_rows(compression_rows(smoke=args.smoke)))
    if args.levels:
        import json

        print()
        print(_levels(json.dumps(transcript(), separators=(",", ":")).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
