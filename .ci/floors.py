"""Check that .ci/lowest-constraints.txt pins every floor of pyproject.toml, and which versions are installed.

    python .ci/floors.py           # the floors match the pins; print what this interpreter has installed
    python .ci/floors.py --lowest  # ... and every pinned package is installed at exactly its pin

Either way torch must be the pinned release: nothing may have upgraded it (a newer torch is a 5 GB CUDA build).
Exits 1 with one line per mismatch.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / ".ci" / "lowest-constraints.txt"


def pins() -> dict[str, Version]:
    """Returns: canonical name -> pinned version, from the ``name==version`` lines of the constraints file."""
    found = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if line:
            name, _, pinned = line.partition("==")
            found[canonicalize_name(name)] = Version(pinned)
    return found


def floor_mismatches(pinned: dict[str, Version]) -> list[str]:
    """Returns: one line per pyproject requirement (core, or any extra) whose ``>=`` floor is not pinned,
    or pinned elsewhere."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]
                    + [r for group in project["optional-dependencies"].values() for r in group]]
    problems = []
    for req in requirements:
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        pin = pinned.get(canonicalize_name(req.name))
        if floors and pin != floors[0]:
            problems.append(f"pyproject.toml has {req}, but {CONSTRAINTS.name} pins {req.name}=={pin}")
    return problems


def installed_mismatches(pinned: dict[str, Version], exact: bool) -> list[str]:
    """Print the installed version of each pinned package. Returns: one line per package off its pin."""
    problems = []
    for name, pin in pinned.items():
        try:
            have = Version(version(name))
        except PackageNotFoundError:
            have = None
        print(f"  {name:<16} {have}")
        if (exact or name == "torch") and (have is None or Version(have.public) != pin):
            problems.append(f"{name} is {have}, but {CONSTRAINTS.name} pins {pin}")
    return problems


def main() -> int:
    pinned = pins()
    problems = floor_mismatches(pinned) + installed_mismatches(pinned, exact="--lowest" in sys.argv[1:])
    for problem in problems:
        print(f"floors.py: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
