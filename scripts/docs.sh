#!/usr/bin/env bash
# Build the documentation site into site/ with MkDocs in strict mode: a broken link, a missing
# page in the nav or an unresolved API reference fails the build. Then check that the API
# reference shows every name it promises (mkdocstrings silently leaves out a public name that has
# no docstring). `bash scripts/docs.sh serve` serves it with live reload instead. The docs tools
# live in their own venv (.venv-docs) so the test venv stays lean.
EXTRAS="[docs]"
VENV="${DOCS_VENV:-.venv-docs}"
source "$(dirname "$0")/_venv.sh"
# Material's end-of-life banner on every build: noted, with the plan, in docs/about.md.
export NO_MKDOCS_2_WARNING=1
if [ "${1:-}" = "serve" ]; then
    exec "$VENV/bin/mkdocs" serve --strict
fi
"$VENV/bin/mkdocs" build --strict --site-dir site

# Each `::: name` of docs/api.md promises its `members:` list when it has one, else a module's
# `__all__` (read from the source, so no framework needs to be installed here), else the name
# itself; each must be an entry of the built site's inventory.
"$VENV/bin/python" - <<'PYTHON'
import ast
import re
import sys
import zlib
from pathlib import Path

header = Path("site/objects.inv").read_bytes().split(b"\n", 4)
inventory = {line.split(" ", 1)[0] for line in zlib.decompress(header[4]).decode().splitlines()}

promised = []
directives = re.findall(r"^::: (\S+)\n((?:    .*\n)*)", Path("docs/api.md").read_text(), flags=re.MULTILINE)
for name, options in directives:
    members = re.search(r"^\s+members: \[(.*)\]$", options, flags=re.MULTILINE)
    source = Path("src", *name.split("."))
    source = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
    if members:
        promised += [f"{name}.{member.strip()}" for member in members.group(1).split(",")]
    else:
        promised.append(name)
        module = ast.parse(source.read_text()).body if source.is_file() else []
        for node in module:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                promised += [f"{name}.{export}" for export in ast.literal_eval(node.value)]
missing = [name for name in promised if name not in inventory]
if not directives or missing:
    sys.exit(f"docs/api.md promises names the built reference does not show (a docstring missing?): {missing}")
print(f"API reference: all {len(promised)} promised names shown")
PYTHON
