"""The package surface: public names, no driver imported by the core, the demo, the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pydantic_toast

ROOT = Path(__file__).resolve().parents[1]

DOCUMENTED_NAMES = {
    "CONTEXT_KEY",
    "ExternalBaseModel",
    "ExternalConfigDict",
    "ExternalReference",
    "ExternalStorageError",
    "RecordNotFoundError",
    "ReferenceLike",
    "StorageBackend",
    "StorageConnectionError",
    "StorageValidationError",
    "UnsupportedEventLoopError",
    "UnsupportedOperationError",
    "aclose",
    "adump",
    "close",
    "dump",
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
        "loaded = [m for m in ('asyncpg', 'redis', 'hiredis') if m in sys.modules]\n"
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


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_blocks_run_as_written(index: int, tmp_path: Path) -> None:
    block = readme_python_blocks()[index]
    script = tmp_path / "block.py"
    script.write_text(block)
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
