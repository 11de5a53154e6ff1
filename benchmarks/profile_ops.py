"""Profile one pydantic-toast operation with pyinstrument and list the library's own hot frames.

    python benchmarks/profile_ops.py redis load_many [--calls 50] [--tree]

Operations: save, load (10-field model), save_many, load_many (1,000), nested_save, nested_load
(a parent with 100 external children). Frames are summed per `file:function` of pydantic_toast:
"self" includes the Rust (pydantic-core) work called from that frame. Needs pyinstrument
(install it into the benchmark venv, see README.md). Creates its own table / key prefix and
removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import secrets
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from baselines import delete_redis_prefix
from bench_models import FLAT10, model_set, values_for

import pydantic_toast

URLS = {
    "sqlite": "sqlite:///{dir}/profile.db?table={token}",
    "postgresql": os.environ.get("TOAST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    + "?table={token}",
    "redis": os.environ.get("TOAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0") + "?prefix={token}",
}


def hot_frames(root: Any, top: int) -> list[str]:
    """Self and inclusive time per pydantic_toast function, as lines of text."""
    total = root.time or 1.0
    own: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def walk(frame: Any, above: frozenset[str], parent: str | None) -> None:
        function = frame.function or ""
        if function.startswith("["):
            if function == "[self]" and parent is not None:
                own[parent] += frame.time
            return
        path = frame.file_path or ""
        key = f"{path.split('pydantic_toast/')[-1]}:{function}" if "pydantic_toast/" in path else None
        if key is not None:
            own[key] += frame.time - sum(child.time for child in frame.children)
            if key not in above:
                inclusive[key] += frame.time
        for child in frame.children:
            walk(child, above | {key} if key else above, key)

    walk(root, frozenset(), None)
    lines = [f"total {total:.3f} s"]
    lines += [f"{100 * t / total:5.1f}% self  {k}" for k, t in sorted(own.items(), key=lambda i: -i[1])[:top]]
    lines += [
        f"{100 * t / total:5.1f}% incl  {k}" for k, t in sorted(inclusive.items(), key=lambda i: -i[1])[:top]
    ]
    return lines


async def profile(backend: str, operation: str, calls: int, tree: bool) -> None:
    profiler_module = importlib.import_module("pyinstrument")
    token = f"bench_profile_{secrets.token_hex(3)}"
    directory = tempfile.mkdtemp(prefix="pydantic-toast-profile-")
    url = URLS[backend].format(dir=directory, token=token)
    models = model_set(url)
    flat10 = models.flat10
    model = flat10(**values_for(FLAT10, 1))
    reference = await model.save()
    batch = [flat10(**values_for(FLAT10, seed)) for seed in range(1000)]
    references = await flat10.save_many(batch)
    children = [models.child(name=f"child {n}", value=n, tags=["a"]) for n in range(100)]
    parent = models.parent(title="parent", children=children)
    parent_reference = await parent.save()
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "save": model.save,
        "load": lambda: flat10.load(reference),
        "save_many": lambda: flat10.save_many(batch),
        "load_many": lambda: flat10.load_many(references),
        "nested_save": parent.save,
        "nested_load": lambda: models.parent.load(parent_reference),
    }
    call = operations[operation]
    try:
        for _ in range(5):
            await call()
        profiler = profiler_module.Profiler(interval=0.0005, async_mode="enabled")
        profiler.start()
        for _ in range(calls):
            await call()
        profiler.stop()
    finally:
        await pydantic_toast.aclose()
        await _cleanup(backend, token)
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{backend} {operation} x{calls}")
    print("\n".join(hot_frames(profiler.last_session.root_frame(), 12)))
    if tree:
        print(profiler.output_text(unicode=False, color=False))


async def _cleanup(backend: str, token: str) -> None:
    if backend == "redis":
        await delete_redis_prefix(URLS["redis"].split("?")[0], token)
    elif backend == "postgresql":
        asyncpg = importlib.import_module("asyncpg")
        connection = await asyncpg.connect(URLS["postgresql"].split("?")[0])
        try:
            await connection.execute(f"DROP TABLE IF EXISTS {token}")
        finally:
            await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("backend", choices=sorted(URLS))
    parser.add_argument(
        "operation", choices=["save", "load", "save_many", "load_many", "nested_save", "nested_load"]
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--tree", action="store_true", help="also print pyinstrument's call tree")
    args = parser.parse_args()
    asyncio.run(profile(args.backend, args.operation, args.calls, args.tree))


if __name__ == "__main__":
    main()
