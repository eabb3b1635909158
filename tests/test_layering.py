"""The layers and the plugin boundary, checked on the source (every import statement).

- A plugin (node/plugins/...) imports only the public ``node`` package, its own modules
  and third-party libraries: never the core, storage, the web layer, the wiring, the
  plugin manager, quart/hypercorn or a storage driver.
- The core (node/core/...) never imports a plugin, the web layer or the wiring (node/app.py).
- Storage (node/storage/...) imports nothing of ours outside node/storage.
- Only node/storage imports lmdb or a PostgreSQL driver.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine("lmdb")  # source checks: no storage

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "node"
DRIVERS = ("lmdb", "psycopg", "psycopg_pool")
WEB = ("quart", "quart_trio", "hypercorn", "werkzeug")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative ones resolved; in
    ``from package import x``, x counts as a module only if it is one."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate, root) else target))
    return found


def sources(under: str) -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py")) if under else sorted(PACKAGE.rglob("*.py"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(under: str, allowed) -> list[str]:
    out = []
    for path in sources(under):
        for line, module in imports_of(path):
            problem = allowed(path, module)
            if problem:
                out.append(f"{path.relative_to(ROOT)}:{line}: imports {module} ({problem})")
    return out


def test_plugins_use_only_the_public_api():
    def allowed(path: Path, module: str) -> str | None:
        own = ".".join(module_name(path).split(".")[:3])  # node.plugins.<plugin>
        if any(within(module, w) for w in WEB + DRIVERS):
            return "a plugin reaches the web layer or storage only through the node API"
        if module == "node" or within(module, own) or module == "node.plugins":
            return None
        if within(module, "node"):
            return "plugins import only the public `node` package"
        return None

    assert violations("plugins", allowed) == []


def test_the_core_does_not_import_plugins_the_web_layer_or_the_wiring():
    def allowed(path: Path, module: str) -> str | None:
        if any(within(module, p) for p in ("node.plugins", "node.web", "node.app", "node.cli")):
            return "the core is below plugins, the web layer and the wiring"
        if any(within(module, w) for w in WEB):
            return "the core does not speak HTTP frameworks"
        return None

    assert violations("core", allowed) == []


def test_storage_imports_nothing_above_it():
    def allowed(path: Path, module: str) -> str | None:
        if within(module, "node") and not within(module, "node.storage"):
            return "storage is the bottom layer"
        return None

    assert violations("storage", allowed) == []


def test_only_storage_speaks_to_the_database_drivers():
    def allowed(path: Path, module: str) -> str | None:
        if not path.is_relative_to(PACKAGE / "storage") and any(within(module, d) for d in DRIVERS):
            return "only node/storage may use a database driver"
        return None

    assert violations("", allowed) == []


def test_the_checker_sees_a_violation(tmp_path):
    """The test can fail: a plugin importing the core is caught, a plugin importing the
    public API is not."""
    fake = tmp_path / "node" / "plugins" / "bad" / "__init__.py"
    fake.parent.mkdir(parents=True)
    (tmp_path / "node" / "core").mkdir()
    (tmp_path / "node" / "core" / "chats.py").write_text("")
    (tmp_path / "node" / "__init__.py").write_text("")
    fake.write_text("from ...core.chats import Chats\nfrom ... import hookimpl\nfrom ...core import chats\n")
    assert [m for _, m in imports_of(fake, tmp_path)] == ["node.core.chats", "node", "node.core.chats"]
