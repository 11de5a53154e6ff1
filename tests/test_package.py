"""The package surface: public names, no driver imported by the core, the demo, the README."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import pydantic_toast

ROOT = Path(__file__).resolve().parents[1]

DOCUMENTED_NAMES = {
    "CONTEXT_KEY",
    "ConcurrentUpdateError",
    "ExternalBaseModel",
    "ExternalConfigDict",
    "ExternalReference",
    "ExternalStorageError",
    "KeySet",
    "ExternalTypeAdapter",
    "MissingDependencyError",
    "RecordIntegrityError",
    "RecordNotFoundError",
    "ReferenceLike",
    "StorageBackend",
    "StorageConnectionError",
    "StorageValidationError",
    "StoredDataError",
    "Toast",
    "UnsupportedEventLoopError",
    "UnsupportedOperationError",
    "aclose",
    "adump",
    "close",
    "delete",
    "dump",
    "is_external_reference",
    "register_backend",
    "stats",
    "upgrade",
}


def test_public_names_are_exactly_the_documented_ones() -> None:
    assert set(pydantic_toast.__all__) == DOCUMENTED_NAMES
    for name in DOCUMENTED_NAMES:
        assert hasattr(pydantic_toast, name)


def test_core_imports_no_driver() -> None:
    code = (
        "import sys, pydantic_toast\n"
        "from pydantic_toast import ExternalBaseModel, ExternalConfigDict\n"
        "class M(ExternalBaseModel):\n"
        "    x: int\n"
        "    model_config = ExternalConfigDict(storage='postgresql://u:p@h/db')\n"
        "class R(ExternalBaseModel):\n"
        "    x: int\n"
        "    model_config = ExternalConfigDict(storage='redis://h:6379/0')\n"
        "loaded = [m for m in ('asyncpg', 'redis', 'hiredis', 'rich') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_package_is_typed() -> None:
    assert (Path(pydantic_toast.__file__).parent / "py.typed").exists()


def test_demo_command_runs_on_the_embedded_default(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pydantic_toast", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"class_name": "UserProfile"' in result.stdout
    assert "equal      True" in result.stdout
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []


# A fenced block in README.md or docs/**/*.md: ```python blocks run; an HTML comment
# `<!-- not-run: reason -->` on the line before the fence makes one compile-only (docs/about.md).
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOT_RUN = re.compile(r"<!-- not-run: (?P<reason>\S.*?) -->")


@dataclass(frozen=True)
class Fence:
    path: str
    line: int
    end: int
    info: str
    code: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def top_level_fences(path: Path) -> list[Fence]:
    """The fenced blocks of a Markdown file; a fence inside a longer fence is text, not a block."""
    lines = path.read_text().splitlines(keepends=True)
    fences: list[Fence] = []
    opening: re.Match[str] | None = None
    start = 0
    for number, line in enumerate(lines):
        match = FENCE.match(line.rstrip("\n"))
        if opening is None:
            if match:
                opening, start = match, number
        elif (
            match
            and not match["info"].strip()
            and match["fence"][0] == opening["fence"][0]
            and len(match["fence"]) >= len(opening["fence"])
        ):
            marker = NOT_RUN.fullmatch(lines[start - 1].strip()) if start else None
            fences.append(
                Fence(
                    path=path.relative_to(ROOT).as_posix(),
                    line=start + 1,
                    end=number + 1,
                    info=opening["info"].strip(),
                    code="".join(lines[start + 1 : number]),
                    not_run=marker["reason"] if marker else None,
                )
            )
            opening = None
    assert opening is None, f"{path}:{start + 1}: a fence that is never closed"
    return fences


def python_blocks() -> list[Fence]:
    return [f for path in documentation_files() for f in top_level_fences(path) if f.info == "python"]


def test_every_not_run_marker_names_its_reason_and_stands_before_a_python_block() -> None:
    marked = {(f.path, f.line - 1) for f in python_blocks() if f.not_run is not None}
    for path in documentation_files():
        fenced = {n for fence in top_level_fences(path) for n in range(fence.line, fence.end + 1)}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip().startswith("<!-- not-run") and number not in fenced:
                where = (path.relative_to(ROOT).as_posix(), number)
                assert where in marked, f"{where}: `<!-- not-run: reason -->` must precede a ```python fence"


def test_python_blocks_use_the_python_info_string() -> None:
    # Any other spelling would highlight as Python but escape the runner below.
    for path in documentation_files():
        for fence in top_level_fences(path):
            assert fence.info.split(" ")[0] not in {"py", "python3", "Python"}, fence.name


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.name)
def test_documented_python_blocks_run_as_written(block: Fence, tmp_path: Path) -> None:
    if block.not_run is not None:
        compile(block.code, block.name, "exec")
        return
    script = tmp_path / "block.py"
    script.write_text(block.code)
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr


def test_version_is_the_installed_distribution_version() -> None:
    assert pydantic_toast.__version__ == importlib.metadata.version("pydantic-toast")


def test_version_is_written_only_in_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert importlib.metadata.version("pydantic-toast") == declared, (
        "the installed metadata is stale: reinstall the project (scripts/test.sh does)"
    )
    assert declared not in (ROOT / "src" / "pydantic_toast" / "__init__.py").read_text()


def test_version_without_distribution_metadata_is_marked_unknown() -> None:
    code = (
        "import importlib.metadata as metadata\n"
        "def missing(name):\n"
        "    raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = missing\n"
        "import pydantic_toast\n"
        "assert pydantic_toast.__version__ == '0+unknown', pydantic_toast.__version__\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def nav_pages() -> list[str]:
    """The pages of the site's navigation, in mkdocs.yml's order."""
    nav = (ROOT / "mkdocs.yml").read_text().partition("\nnav:\n")[2].partition("\n\n")[0]
    return re.findall(r"^\s+- [^:]+: (\S+\.md)$", nav, flags=re.MULTILINE)


def test_the_home_page_leads_to_every_page_of_the_site() -> None:
    where_next = (ROOT / "docs" / "index.md").read_text().partition("\n## Where next\n")[2]
    linked = set(re.findall(r"\]\(([^)#]+\.md)\)", where_next))
    pages = nav_pages()
    assert len(pages) > 20, pages  # the nav parsed
    assert linked == set(pages) - {"index.md"}


def test_the_api_reference_renders_every_public_module() -> None:
    # The package's own names, the conformance suite, and each framework adapter (a module of
    # pydantic_toast.integrations not starting with "_"); docs/api.md says the rest is internal.
    rendered = set(re.findall(r"^::: (\S+)$", (ROOT / "docs" / "api.md").read_text(), flags=re.MULTILINE))
    integrations = Path(pydantic_toast.__file__).parent / "integrations"
    adapters = {f"pydantic_toast.integrations.{p.stem}" for p in integrations.glob("[!_]*.py")}
    assert adapters, integrations
    assert {"pydantic_toast", "pydantic_toast.testing", *adapters} <= rendered
