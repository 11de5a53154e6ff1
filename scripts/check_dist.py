"""Checks of the built distributions, for scripts/check_dist.sh.

`contents DIST_DIR PYPROJECT` (build venv): one sdist and one wheel, named with pyproject.toml's
version; the wheel holds the package and its metadata only, declares every extra and the console
script. Prints the version.

`installed README VERSION EXTRA` (a fresh venv with the wheel installed, run with `python -I`
from an empty directory so no source tree is on the path): the package imported is the installed
one, at that version; exactly the drivers of EXTRA are installed; importing the package and using
a SQLite model imports none of them; the README quickstart and the demo run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import NoReturn

# Optional imports the extras bring, by import name; the core must import none of them.
DRIVERS = (
    "asyncpg",
    "redis",
    "hiredis",
    "rich",
    "obstore",
    "backports.zstd",
    "cryptography",
    "opentelemetry",
)
# [zstd] installs the backport before Python 3.14 only (compression.zstd is standard from 3.14).
_ZSTD = {"backports.zstd"} if sys.version_info < (3, 14) else set()
EXTRA_DRIVERS = {
    "core": set(),
    "postgresql": {"asyncpg"},
    "redis": {"redis"},
    "cli": {"rich"},
    "s3": {"obstore"},
    "all": {"asyncpg", "redis", "hiredis", "rich", "obstore", "cryptography", "opentelemetry", *_ZSTD},
}
DECLARED_EXTRAS = {
    "postgresql",
    "redis",
    "hiredis",
    "cli",
    "s3",
    "zstd",
    "encryption",
    "otel",
    "celery",
    "temporal",
    "langgraph",
    "faststream",
    "all",
}


def fail(message: str) -> NoReturn:
    sys.exit(f"check_dist: {message}")


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
    if not extras >= DECLARED_EXTRAS:
        fail(f"the wheel's metadata lacks the extras {sorted(DECLARED_EXTRAS - extras)}")
    if "pydantic-toast = pydantic_toast.cli:main" not in entry_points:
        fail("the wheel does not declare the pydantic-toast console script")
    print(version)


def quickstart(readme: Path) -> str:
    """The first Python block after the README's "## Quickstart" heading, as written there."""
    text = readme.read_text()
    _, found, after = text.partition("\n## Quickstart\n")
    block = re.search(r"^```python\n(.*?)^```", after, flags=re.DOTALL | re.MULTILINE)
    if not found or block is None:
        fail(f"no Python block under '## Quickstart' in {readme}")
    return block.group(1)


def assert_no_driver_imported(when: str) -> None:
    loaded = [name for name in DRIVERS if name in sys.modules]
    if loaded:
        fail(f"{when}, the core imported {loaded}: a driver must only be imported by its backend")


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False


def check_installed(readme: Path, version: str, extra: str) -> None:
    import pydantic_toast

    package = Path(pydantic_toast.__file__).resolve()
    if not package.is_relative_to(Path(sys.prefix).resolve()):
        fail(f"imported pydantic_toast from {package}, not from the venv {sys.prefix}")
    if pydantic_toast.__version__ != version:
        fail(f"pydantic_toast.__version__ is {pydantic_toast.__version__!r}, the wheel is {version!r}")
    assert_no_driver_imported("after `import pydantic_toast`")

    installed = {name for name in DRIVERS if _found(name)}
    if installed != EXTRA_DRIVERS[extra]:
        fail(f"[{extra}] installed the drivers {sorted(installed)}, expected {sorted(EXTRA_DRIVERS[extra])}")

    code = compile(quickstart(readme), f"{readme} (Quickstart)", "exec")
    exec(code, {"__name__": "__main__"})  # noqa: S102 - the README's own quickstart, as a user runs it
    assert_no_driver_imported("after the README quickstart on SQLite")

    environment = {**os.environ, "PYTHONWARNINGS": "error"}
    for command in (
        [sys.executable, "-I", "-m", "pydantic_toast", "demo"],
        [str(Path(sys.executable).parent / "pydantic-toast"), "demo"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)  # noqa: S603
        if result.returncode != 0 or "equal      True" not in result.stdout or result.stderr:
            fail(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"[{extra}] ok: version {version}, drivers {sorted(installed) or 'none'}, quickstart and demo ran")


def main() -> None:
    match sys.argv[1:]:
        case ["contents", dist_dir, pyproject]:
            check_contents(Path(dist_dir), Path(pyproject))
        case ["installed", readme, version, extra] if extra in EXTRA_DRIVERS:
            check_installed(Path(readme), version, extra)
        case _:
            fail(f"usage: see the module docstring of {__file__}")


if __name__ == "__main__":
    main()
