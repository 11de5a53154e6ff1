"""Checks of the built distributions, for scripts/check_dist.sh.

`variants PYPROJECT` (any Python): prints the installs to check, one a line: `core` (no extra)
and every user-facing extra of pyproject.toml. Fails when an extra has no expectations here, so
a new extra cannot ship unchecked.

`contents DIST_DIR PYPROJECT` (build venv): one sdist and one wheel, named with pyproject.toml's
version; the wheel holds the package and its metadata only, declares exactly pyproject's extras
and the console script. Prints the version.

`installed ROOT VERSION VARIANT` (a fresh venv with the wheel installed with that extra, run with
`python -I` from an empty directory so no source tree is on the path; ROOT's README.md and
pyproject.toml are read as text only): the package imported is the installed one, at that
version; exactly the optional modules of the extra are installed; importing the package, the
README quickstart and defining models on every backend import none of them; each feature behind
an extra works where the extra is installed and elsewhere raises an ImportError naming the
extra; what each extra is for runs (the C parser, spans, the conformance suite, each framework
adapter); the demo runs, as a module and as the console script.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Unpack

if TYPE_CHECKING:
    from pydantic_toast import ExternalConfigDict

# Extras for working on this repository, not for users: [dev] is the test suite's environment
# (linters, test servers, every framework's brokers), installed and used by every CI run
# (scripts/test.sh); [docs] is the site's tools, installed and used by scripts/docs.sh.
DEVELOPMENT_EXTRAS = {"dev", "docs"}

# [zstd] installs the backport before Python 3.14 only (compression.zstd is standard from 3.14).
_ZSTD = {"backports.zstd"} if sys.version_info < (3, 14) else set()
# The optional modules each user-facing extra must install, by import name. Every install must
# have exactly the union of its extras' modules, and the core must import none of them.
EXTRA_MODULES: dict[str, set[str]] = {
    "postgresql": {"asyncpg"},
    "redis": {"redis"},
    "hiredis": {"redis", "hiredis"},
    "cli": {"rich"},
    "encryption": {"cryptography"},
    "zstd": _ZSTD,
    "s3": {"obstore"},
    "otel": {"opentelemetry"},
    "testing": {"pytest", "pytest_asyncio"},
    "celery": {"celery", "kombu"},
    "temporal": {"temporalio"},
    "langgraph": {"langgraph.checkpoint"},
    "faststream": {"faststream"},
}
OPTIONAL_MODULES = sorted(set().union(*EXTRA_MODULES.values()) | {"backports.zstd"})
# An extra that brings another's feature: redis[hiredis] is redis-py with its C parser.
IMPLIED = {"hiredis": {"redis"}}


def fail(message: str) -> NoReturn:
    sys.exit(f"check_dist: {message}")


def extras_of(pyproject: Path) -> dict[str, list[str]]:
    extras: dict[str, list[str]] = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    return extras


def variants(pyproject: Path) -> list[str]:
    user_facing = set(extras_of(pyproject)) - DEVELOPMENT_EXTRAS
    unchecked = user_facing - {"all"} - set(EXTRA_MODULES)
    if unchecked:
        fail(f"the extras {sorted(unchecked)} have no expectations in EXTRA_MODULES ({__file__})")
    stale = set(EXTRA_MODULES) - user_facing
    if stale:
        fail(f"EXTRA_MODULES names extras that pyproject.toml does not declare: {sorted(stale)}")
    return ["core", *sorted(user_facing)]


def included_extras(variant: str, pyproject: Path) -> set[str]:
    """The extras an install of `variant` amounts to; [all] is read from pyproject.toml."""
    if variant == "core":
        return set()
    if variant == "all":
        names: set[str] = set()
        for requirement in extras_of(pyproject)["all"]:
            match = re.fullmatch(r"pydantic-toast\[([a-z0-9,_-]+)\]", requirement)
            if match is None:
                fail(f"[all] should only name other extras of pydantic-toast, found {requirement!r}")
            names |= set(match.group(1).split(","))
        return set().union(*(included_extras(name, pyproject) for name in names))
    return {variant, *IMPLIED.get(variant, set())}


# ---------------------------------------------------------------------------- the distributions


def check_contents(dist_dir: Path, pyproject: Path) -> None:
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    wheels = sorted(dist_dir.glob("*.whl"))
    sdists = sorted(dist_dir.glob("*.tar.gz"))
    expected_wheel = f"pydantic_toast-{version}-py3-none-any.whl"
    if [w.name for w in wheels] != [expected_wheel]:
        fail(f"expected exactly {expected_wheel} in {dist_dir}, found {[w.name for w in wheels]}")
    if [s.name for s in sdists] != [f"pydantic_toast-{version}.tar.gz"]:
        fail(f"expected exactly pydantic_toast-{version}.tar.gz, found {[s.name for s in sdists]}")

    dist_info = f"pydantic_toast-{version}.dist-info/"
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(dist_info + "METADATA").decode()
        entry_points = wheel.read(dist_info + "entry_points.txt").decode()
    strays = [n for n in names if not n.startswith(("pydantic_toast/", dist_info))]
    if strays:
        fail(f"the wheel holds files outside the package: {strays}")
    for required in ("__init__.py", "py.typed", "cli.py", "backends/sqlite.py", "backends/redis/__init__.py"):
        if f"pydantic_toast/{required}" not in names:
            fail(f"the wheel lacks {required}")
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, flags=re.MULTILINE))
    if extras != set(extras_of(pyproject)):
        fail(f"the wheel declares the extras {sorted(extras)}, pyproject.toml {sorted(extras_of(pyproject))}")
    if "pydantic-toast = pydantic_toast.cli:main" not in entry_points:
        fail("the wheel does not declare the pydantic-toast console script")
    print(version)


# ---------------------------------------------------------------------------- an installed wheel


def quickstart(readme: Path) -> str:
    """The first Python block after the README's "## Quickstart" heading, as written there."""
    text = readme.read_text()
    _, found, after = text.partition("\n## Quickstart\n")
    block = re.search(r"^```python\n(.*?)^```", after, flags=re.DOTALL | re.MULTILINE)
    if not found or block is None:
        fail(f"no Python block under '## Quickstart' in {readme}")
    return block.group(1)


def assert_no_optional_module_imported(when: str) -> None:
    loaded = [name for name in OPTIONAL_MODULES if name in sys.modules]
    if loaded:
        fail(f"{when}, the core imported {loaded}: a driver must only be imported by its backend")


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False


def _model(**config: Unpack[ExternalConfigDict]) -> type[Any]:
    """Defines an external model: a missing driver is found (not imported) at this point."""
    from pydantic_toast import ExternalBaseModel

    class Probe(ExternalBaseModel):
        text: str
        model_config = config

    return Probe


def _round_trip(**config: Unpack[ExternalConfigDict]) -> None:
    model = _model(**config)
    probe = model(text="x" * 10_000)
    if model.model_validate(probe.model_dump()) != probe:
        fail(f"a model with {config} did not load back equal")


# Each feature behind an extra, as a user meets it. Backends: defining a model finds the driver;
# the others run. Without the extra, each must raise an ImportError whose message names it.
def _define(*storages: str) -> Callable[[], None]:
    def define() -> None:
        for storage in storages:
            _model(storage=storage)

    return define


def _encryption() -> None:
    from pydantic_toast import KeySet

    _round_trip(storage="memory://encryption", encryption=KeySet({"k1": KeySet.generate_key()}))


def _import(module: str) -> Callable[[], None]:
    def import_it() -> None:
        importlib.import_module(module)

    return import_it


FEATURES: dict[str, Callable[[], None]] = {
    "postgresql": _define("postgresql://app@localhost/app"),
    "redis": _define("redis://localhost:6379/0", "redis+cluster://localhost:7000"),
    "s3": _define(
        "s3://bucket/prefix", "az://container/prefix?account=toastchecks", "gs://bucket", "file:///tmp/t"
    ),
    "encryption": _encryption,
    "zstd": lambda: _round_trip(storage="memory://zstd", compression="zstd"),
    "testing": _import("pydantic_toast.testing"),
    "celery": _import("pydantic_toast.integrations.celery"),
    "temporal": _import("pydantic_toast.integrations.temporal"),
    "langgraph": _import("pydantic_toast.integrations.langgraph"),
    "faststream": _import("pydantic_toast.integrations.faststream"),
}


def check_features(extras: set[str]) -> None:
    for feature, run in FEATURES.items():
        # From Python 3.14 zstd is in the standard library: compression="zstd" needs no extra.
        expected = feature in extras or (feature == "zstd" and not _ZSTD)
        try:
            run()
        except ImportError as exc:
            if expected:
                fail(f"[{feature}] is installed, yet {feature} raised {type(exc).__name__}: {exc}")
            if f"pydantic-toast[{feature}]" not in str(exc):
                fail(f"without [{feature}], the ImportError does not name the extra: {exc}")
        else:
            if not expected:
                fail(f"{feature} worked without the [{feature}] extra: then what is the extra for?")
        if feature in ("postgresql", "redis", "s3"):
            assert_no_optional_module_imported(f"after defining a model on the {feature} backend")


# What each extra is for, beyond the features above, run where the extra is installed.
def _hiredis() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        fail("[hiredis] is installed, yet redis-py does not use the hiredis parser")


def _cli() -> None:
    # `copy` shows its progress with rich when the [cli] extra installed it.
    from pydantic_toast import cli

    model = _model(storage="sqlite:///cli-source.db")
    model(text="copied").model_dump()
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = cli.main(["copy", "sqlite:///cli-source.db", "sqlite:///cli-copy.db"])
    if status != 0:
        fail(f"pydantic-toast copy failed ({status}):\n{output.getvalue()}")
    if "rich" not in sys.modules:
        fail("[cli] is installed, yet `pydantic-toast copy` showed no rich progress")


def _otel() -> None:
    # The API alone (no SDK, as the extra installs it): a provider that records span names.
    from opentelemetry import trace

    started: list[str] = []

    class Tracer(trace.Tracer):
        def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
            started.append(name)
            return trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)

        # The API types its own method with a private context-manager class: ignored, not copied.
        @contextlib.contextmanager
        def start_as_current_span(  # type: ignore[override]
            self, name: str, *args: Any, **kwargs: Any
        ) -> Iterator[trace.Span]:
            with trace.use_span(self.start_span(name), end_on_exit=True) as span:
                yield span

    class Provider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return Tracer()

    trace.set_tracer_provider(Provider())
    _round_trip(storage="memory://otel")
    if len(started) < 2 or not all(name.startswith("pydantic_toast") for name in started):
        fail(f"[otel]: a save and a load made the spans {started}, expected one per round trip")


_CONFORMANCE = """\
import pytest

from pydantic_toast.testing import BackendConformance


class TestSQLite(BackendConformance):
    @pytest.fixture
    def backend_url(self, tmp_path):
        return f"sqlite:///{tmp_path}/conformance.db"
"""


def _conformance_suite() -> None:
    # As docs/backends/contract.md tells a backend's author to run it, on the built-in SQLite.
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "test_conformance.py").write_text(_CONFORMANCE)
        Path(directory, "pytest.ini").write_text(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
        )
        result = subprocess.run(
            [sys.executable, "-I", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if result.returncode != 0 or " passed" not in result.stdout:
        fail(f"[testing]: the conformance suite failed on SQLite:\n{result.stdout}\n{result.stderr}")


def _celery() -> None:
    from kombu.utils.json import dumps, loads

    from pydantic_toast.integrations.celery import install

    install()
    model = _model(storage="memory://celery")
    report = model(text="x" * 100_000)
    body = dumps([[report], {}, {}])  # type: ignore[no-untyped-call]  # kombu ships no types
    if len(body) > 200 or model.model_validate(loads(body)[0][0]) != report:  # type: ignore[no-untyped-call]
        fail(f"[celery]: a task message carried {len(body)} characters, not the model's reference")


def _temporal() -> None:
    from pydantic import BaseModel

    from pydantic_toast.integrations.temporal import toast_data_converter

    class Document(BaseModel):
        body: str

    async def round_trip() -> None:
        converter = toast_data_converter("memory://temporal", threshold=1024)
        document = Document(body="x" * 100_000)
        [payload] = await converter.encode([document])
        if payload.ByteSize() > 1024 or await converter.decode([payload], [Document]) != [document]:
            fail(f"[temporal]: a payload of {payload.ByteSize()} bytes, not a reference that loads back")

    asyncio.run(round_trip())


def _langgraph() -> None:
    from pydantic_toast.integrations.langgraph import ToastSerializer

    serde = ToastSerializer("memory://langgraph", threshold=1024)
    value = {"document": "x" * 100_000}
    typed = serde.dumps_typed(value)
    if len(typed[1]) > 1024 or serde.loads_typed(typed) != value:
        fail(f"[langgraph]: a checkpoint value took {len(typed[1])} bytes, not a reference that loads back")


def _faststream() -> None:
    from faststream import BaseMiddleware

    from pydantic_toast.integrations.faststream import ToastMiddleware

    if not issubclass(ToastMiddleware, BaseMiddleware):
        fail("[faststream]: ToastMiddleware is not a FastStream middleware")


USES: dict[str, Callable[[], None]] = {
    "hiredis": _hiredis,
    "cli": _cli,
    "otel": _otel,
    "testing": _conformance_suite,
    "celery": _celery,
    "temporal": _temporal,
    "langgraph": _langgraph,
    "faststream": _faststream,
}


def check_installed(root: Path, version: str, variant: str) -> None:
    import pydantic_toast

    package = Path(pydantic_toast.__file__).resolve()
    if not package.is_relative_to(Path(sys.prefix).resolve()):
        fail(f"imported pydantic_toast from {package}, not from the venv {sys.prefix}")
    if pydantic_toast.__version__ != version:
        fail(f"pydantic_toast.__version__ is {pydantic_toast.__version__!r}, the wheel is {version!r}")
    assert_no_optional_module_imported("after `import pydantic_toast`")

    extras = included_extras(variant, root / "pyproject.toml")
    expected = set().union(*(EXTRA_MODULES[extra] for extra in extras))
    installed = {name for name in OPTIONAL_MODULES if _found(name)}
    if installed != expected:
        fail(f"[{variant}] installed the optional modules {sorted(installed)}, expected {sorted(expected)}")

    readme = root / "README.md"
    code = compile(quickstart(readme), f"{readme} (Quickstart)", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the README's own quickstart, as a user runs it
    assert_no_optional_module_imported("after the README quickstart on SQLite")

    check_features(extras)
    for extra in sorted(extras & set(USES)):
        USES[extra]()

    environment = {**os.environ, "PYTHONWARNINGS": "error"}
    for command in (
        [sys.executable, "-I", "-m", "pydantic_toast", "demo"],
        [str(Path(sys.executable).parent / "pydantic-toast"), "demo"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)  # noqa: S603
        if result.returncode != 0 or "equal      True" not in result.stdout or result.stderr:
            fail(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    ran = ", ".join(sorted(extras & set(USES))) or "nothing more"
    print(
        f"[{variant}] ok: version {version}, optional modules {sorted(installed) or 'none'}, "
        f"features {sorted(extras & set(FEATURES)) or 'none'} (the rest refused naming their extra), "
        f"used: {ran}; quickstart and demo ran"
    )


def main() -> None:
    match sys.argv[1:]:
        case ["variants", pyproject]:
            print("\n".join(variants(Path(pyproject))))
        case ["contents", dist_dir, pyproject]:
            check_contents(Path(dist_dir), Path(pyproject))
        case ["installed", root, version, variant] if variant in variants(Path(root) / "pyproject.toml"):
            check_installed(Path(root), version, variant)
        case _:
            fail(f"usage: see the module docstring of {__file__}")


if __name__ == "__main__":
    main()
