"""Uninstall what inventory-sync does not need at run time (pytest, playwright, ruff, mypy, …).

requirements.lock pins the dev tools too (one lock, hash-checked). The image installs all of
it, then keeps only what `inventory-sync`'s own requirements reach, markers evaluated, without
the `dev` extra. Run inside the environment to prune; `--dry-run` only lists.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "inventory-sync"
ALWAYS = {"pip"}


def runtime_closure(root: str = ROOT) -> set[str]:
    """The distributions `root` needs, transitively, with the extras each requirement asks for."""
    keep: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python, never installed in this environment
        keep.add(key)
        for text in distribution.requires or []:
            requirement = Requirement(text)
            wanted = extras or frozenset({""})
            if requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in wanted
            ):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return keep


def main(argv: list[str]) -> int:
    installed = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
    extra = sorted(installed - runtime_closure() - ALWAYS)
    print(f"not needed at run time ({len(extra)}): {', '.join(extra)}")
    if extra and "--dry-run" not in argv:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *extra], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
