"""The dataset formats by name: each module writes an image's own files and, at the end, the index files."""

from __future__ import annotations

from types import ModuleType


def format_module(name: str) -> ModuleType:
    """Returns: the module that writes the format ``name`` (coco, yolo, voc, labelstudio).

    Raises:
        ClipSegError: an unknown name, listing the choices.
    """
    import clipseg_cli.label.coco as coco
    import clipseg_cli.label.labelstudio as labelstudio
    import clipseg_cli.label.voc as voc
    import clipseg_cli.label.yolo as yolo
    from clipseg_cli.errors import ClipSegError

    modules = {module.NAME: module for module in (coco, yolo, voc, labelstudio)}
    if name not in modules:
        raise ClipSegError(f"--format {name!r}: choose one of {', '.join(modules)}")
    return modules[name]


FORMATS = ("coco", "yolo", "voc", "labelstudio")
