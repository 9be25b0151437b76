"""The reading direction of ``ARCHITECTURE.md``: each module imports only its own layer and
the ones below it.

    cli -> api -> ops -> images -> {registry, store} -> auth -> transport -> core

Every import counts, wherever it stands (a function's lazy import, a ``TYPE_CHECKING``
block).  ``registry`` and ``store`` (with ``layout``, storage on disk) are one level and
never import each other.  An op never imports another op: an op split over several
modules names them after it (``sync``, ``syncplan``, ``syncreport``), and what two ops
share lives in a lower layer (the copy engine in ``images``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import derrick

SRC = Path(derrick.__file__).resolve().parent

#: The layers, lowest first; a module's layer is that of its package, else (a module
#: directly under ``derrick``) the one named here, else core.
LEVELS = ("core", "transport", "auth", "registry|store", "images", "ops", "api", "cli")
PACKAGES = {
    "auth": "auth",
    "registry": "registry",
    "store": "store",
    "layout": "store",
    "images": "images",
    "ops": "ops",
    "cli": "cli",
}
TOP_MODULES = {
    "transport": "transport",
    "connections": "transport",
    "neterrors": "transport",
    "client": "api",
    "shortcuts": "api",
    "__init__": "api",
}


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(("derrick", *parts)).removesuffix(".__init__")


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]  # after "derrick"
    if not parts:
        return "api"
    if len(parts) > 1 or parts[0] in PACKAGES:
        return PACKAGES.get(parts[0], "core")
    return TOP_MODULES.get(parts[0], "core")


def level_of(layer: str) -> int:
    return next(i for i, names in enumerate(LEVELS) if layer in names.split("|"))


def imports_of(path: Path, module: str, root: Path = SRC) -> set[str]:
    """Every ``derrick`` module the file imports (a name imported from a package counts
    as its submodule when there is one)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "derrick")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, ``level - 1`` packages up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            if base.split(".")[0] != "derrick":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _exists(sub, root) else base)
    found.discard(module)
    return found


def _exists(module: str, root: Path) -> bool:
    rel = Path(*module.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def op_of(module: str, root: Path = SRC) -> str:
    """The op a module of ``derrick.ops`` belongs to: the shortest ops module its name
    starts with (``syncplan`` is part of ``sync``)."""
    name = module.split(".")[2]
    ops = sorted(p.stem for p in (root / "ops").glob("*.py") if p.stem != "__init__")
    return next((op for op in ops if name.startswith(op)), name)


def _is_op(module: str) -> bool:
    parts = module.split(".")
    return len(parts) == 3 and parts[1] == "ops"


def violations(root: Path = SRC) -> list[str]:
    """``importer (layer) imports imported (layer)`` for every import against the rules."""
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        mine = layer_of(module)
        for target in sorted(imports_of(path, module, root)):
            theirs = layer_of(target)
            up = level_of(theirs) > level_of(mine)
            across = level_of(theirs) == level_of(mine) and theirs != mine
            other_op = (
                _is_op(module) and _is_op(target) and op_of(module, root) != op_of(target, root)
            )
            if up or across or other_op:
                out.append(f"{module} ({mine}) imports {target} ({theirs})")
    return out


def test_the_layer_of_a_module() -> None:
    assert layer_of("derrick.reference") == "core"
    assert layer_of("derrick.transport") == "transport"
    assert layer_of("derrick.layout.oci") == "store"
    assert layer_of("derrick.ops.syncplan") == "ops"
    assert layer_of("derrick") == layer_of("derrick.client") == "api"
    assert op_of("derrick.ops.syncplan") == op_of("derrick.ops.sync") == "sync"
    assert op_of("derrick.ops.transfer") == "transfer"


def test_the_check_finds_each_kind_of_wrong_import(tmp_path: Path) -> None:
    """Imports upwards, across (registry and storage), and between ops, wherever they
    stand in a file and however they are written, are found; allowed ones are not."""
    tree = {
        "store/cache.py": "def f():\n    from derrick.images import plan\n",
        "layout/oci.py": "from derrick.registry.client import RegistryClient\n",
        "registry/client.py": "from ..store import cache\nfrom derrick import digest\n",
        "images/plan.py": "import derrick.store.cache\nimport derrick.ops.sync\n",
        "ops/sync.py": "from derrick.ops import syncplan, transfer\n",
        "ops/syncplan.py": "from derrick.images import plan\n",
        "ops/transfer.py": "",
        "digest.py": "",
    }
    for name, text in tree.items():
        path = tmp_path / "derrick" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert sorted(violations(tmp_path / "derrick")) == [
        "derrick.images.plan (images) imports derrick.ops.sync (ops)",
        "derrick.layout.oci (store) imports derrick.registry.client (registry)",
        "derrick.ops.sync (ops) imports derrick.ops.transfer (ops)",
        "derrick.registry.client (registry) imports derrick.store.cache (store)",
        "derrick.store.cache (store) imports derrick.images.plan (images)",
    ]


def test_no_module_imports_a_higher_layer_or_another_op() -> None:
    assert violations() == []


def test_the_module_map_names_every_module_once() -> None:
    """``ARCHITECTURE.md`` has one line per module of ``src/derrick``, and none for a
    module that is gone."""
    text = (SRC.parents[1] / "ARCHITECTURE.md").read_text()
    mapped = re.findall(r"^\* `([\w/]+\.py)`", text[text.index("## Module map") :], re.M)
    modules = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py"))
    assert sorted(mapped) == modules
