"""The package's modules form layers (docs/design.md section 2), and no module imports one above its own:
every ``import`` and ``from ... import`` of every module of fusedrnn, at module level or inside a
function, is read from the source and checked against the order below.  A new module must be
placed in it."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fusedrnn"

#: bottom to top; a module may import modules of its own layer or of the layers below
LAYERS = [
    ["fusedrnn.cells"],
    ["fusedrnn.layer"],
    ["fusedrnn.reference", "fusedrnn._extension", "fusedrnn.triton_kernels", "fusedrnn.torchscript",
     "fusedrnn._export_limits"],
    ["fusedrnn.backends", "fusedrnn.zoneout", "fusedrnn.dropconnect"],
    ["fusedrnn.ops"],
    ["fusedrnn.functional"],
    ["fusedrnn.modules", "fusedrnn.rnn_base", "fusedrnn._module_checks", "fusedrnn._autocast",
     "fusedrnn.cell_modules", "fusedrnn._dynamo_compat", "fusedrnn.pyramid", "fusedrnn.convert",
     "fusedrnn._converted_classes", "fusedrnn.revert", "fusedrnn.quantization", "fusedrnn.onnx"],
    ["fusedrnn"],  # the package's __init__: the public names
    ["fusedrnn.testing"],
    ["fusedrnn.bench", "fusedrnn.check"],
]


def level(module: str) -> int:
    """The layer of a module of fusedrnn: that of the longest entry naming it or a package above it."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_import_layers.py: place it there")
    return best[1]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path):
    """(line, module) of every fusedrnn module the file imports (for ``from X import name``, X.name
    where that is a module, else X)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fusedrnn":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "fusedrnn":
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                as_module = PACKAGE.parent.joinpath(*candidate.split("."))
                is_module = as_module.with_suffix(".py").exists() or (as_module / "__init__.py").exists()
                yield node.lineno, candidate if is_module else source


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_imports_a_layer_above_its_own(path):
    this = module_name(path)
    upward = [f"line {line}: {module} (layer {level(module)})" for line, module in imported_modules(path)
              if level(module) > level(this)]
    assert not upward, f"{this} (layer {level(this)}) imports upward: " + "; ".join(upward)


def test_the_check_sees_imports():
    """The walk finds what it must (else the test above would pass on anything)."""
    found = {module for _, module in imported_modules(PACKAGE / "reference.py")}
    assert {"fusedrnn.cells", "fusedrnn.layer"} <= found
