"""The import graph of src/clipseg_cli points one way: no cycle, and no module imports a higher layer.

Read from the source with `ast` (imports inside functions count too), so the check needs no import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clipseg_cli"

# Lowest first. A module may import its own layer and the layers before it, never a later one. Imports under
# TYPE_CHECKING count too (a type named from above is an arrow back up), and no two modules may import each
# other, directly or round a cycle, even inside one layer or one package.
LAYERS = [
    ["clipseg_cli", "clipseg_cli.constants", "clipseg_cli.errors", "clipseg_cli.textlines",
     "clipseg_cli.cachedir"],  # the package (__version__, lazy names) and the ground helpers
    ["clipseg_cli.modeling", "clipseg_cli.imaging", "clipseg_cli.runtime", "clipseg_cli.run.inputs",
     "clipseg_cli.scale.watch"],
    ["clipseg_cli.postprocess", "clipseg_cli.fingerprint"],
    ["clipseg_cli.checkpoints"],  # the loader builds the model: modeling never imports it
    ["clipseg_cli.backends"],  # the runtimes a Segmenter runs the model on (torch, ONNX Runtime)
    ["clipseg_cli.run.outputs", "clipseg_cli.prompts", "clipseg_cli.refine"],
    ["clipseg_cli.run.targets", "clipseg_cli.run.slots"],  # per image: names, skip or redo, combined overlay, order
    ["clipseg_cli.predictor"],
    ["clipseg_cli.run.maps"],  # the mask maths: logits to masks and maps
    ["clipseg_cli.run.engine"],
    ["clipseg_cli.run.job", "clipseg_cli.run", "clipseg_cli.training"],
    ["clipseg_cli.scale", "clipseg_cli.serve"],  # the same run spread out (shards, Ray, Ray Data), and served
    ["clipseg_cli.label"],  # clipseg label: datasets from masks (imported by commands/label.py only)
    ["clipseg_cli.video"],  # clipseg video (imported by commands/video.py only)
    ["clipseg_cli.commands"],
    ["clipseg_cli.cli", "clipseg_cli.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of a module: that of the longest prefix listed in LAYERS."""
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return found


def imports_of(path: Path, module: str) -> set[str]:
    """The clipseg_cli modules that a module imports, anywhere in its code."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in found if name == "clipseg_cli" or name.startswith("clipseg_cli.")}


def graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (names that are not modules are dropped)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {module: {name for name in imports_of(path, module) if name in paths and name != module}
            for module, path in paths.items()}


def test_every_import_points_down_the_layers() -> None:
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [module, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    # the model reached its loader lazily once: that must count as an upward import
    path = tmp_path / "clipseg.py"
    path.write_text("def f():\n    from clipseg_cli.checkpoints.loading import load_model\n", encoding="utf-8")
    assert "clipseg_cli.checkpoints.loading" in imports_of(path, "clipseg_cli.modeling.clipseg")
    assert layer_of("clipseg_cli.checkpoints.loading") > layer_of("clipseg_cli.modeling.clipseg")
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from clipseg_cli.run.job import Job\n",
                    encoding="utf-8")
    assert "clipseg_cli.run.job" in imports_of(path, "clipseg_cli.modeling.clipseg")  # a type from above counts


def test_the_root_holds_at_most_twelve_modules_and_every_module_name_is_unique() -> None:
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= 12, f"{len(root)} modules at the package root (group them into wings): {root}"
    names: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            names.setdefault(path.stem, []).append(module_name(path))
    shared = {name: modules for name, modules in names.items() if len(modules) > 1}
    assert not shared, f"modules that share a name (say what each holds): {shared}"
