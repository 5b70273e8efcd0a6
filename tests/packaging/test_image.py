"""The image's recipe copies the product and its lock, and no dev tooling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLING = ("sandbox", "devstack", "benchmarks", "tests", "demo")


def copied_sources() -> list[str]:
    """The sources of every COPY from the build context (not from another stage)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def test_the_dockerfile_copies_no_dev_tooling():
    copied = copied_sources()
    assert {"flows/", "tasks/", "expectations/", "deployments/", "requirements.lock"} <= set(copied)
    assert [s for s in copied if s.rstrip("/").split("/")[0] in DEV_TOOLING] == []


def test_the_build_context_lets_no_dev_tooling_in():
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    assert [a for a in allowed if a.split("/")[0] in DEV_TOOLING] == []


def test_the_image_installs_the_package_not_the_checkout():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip install [^\n]*--no-deps[^\n]* \.\s", text)
    assert " -e ." not in text
