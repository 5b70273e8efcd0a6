"""The README's sample run, written from and checked against a real `make demo`.

`python -m devstack.readme_sample` runs the demo (the sandbox API, one sync through the CLI's own
code, the demo's check) in a temporary folder and writes what it printed between the README's
markers; `--check` exits 1, with a diff, when the README shows something else. What changes from
one run to the next (the run's name, times, durations, the sandbox's port, the folder) is
normalised before comparing, so the check notices only a change in what the CLI says.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN = "<!-- sample-run:begin -->"
END = "<!-- sample-run:end -->"
COMMAND = "make demo"

_RUN_NAME = re.compile(r"^inventory-sync run (\S+)", re.MULTILINE)
_VARYING = (
    (re.compile(r"http://127\.0\.0\.1:\d+"), "http://127.0.0.1:<port>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?"), "<time>"),
    (re.compile(r"\d{8}T\d{6}Z"), "<time>"),
    (re.compile(r"\b\d+\.\d+s\b"), "<seconds>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in \d+s\)"), "<time> UTC (in <seconds>)"),
)


def demo_output(timeout: float = 600) -> str:
    """What `make demo` prints on stdout, run in a fresh folder, with paths as in the checkout."""
    with tempfile.TemporaryDirectory(prefix="readme-sample-") as tmp:
        root = Path(tmp).resolve()
        (root / "demo").mkdir()
        shutil.copy(ROOT / "demo" / "inventory-sync.toml", root / "demo")
        environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PREFECT_API", "LIGHTSPEED_"))
        }
        environ |= {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")])),
            "PREFECT_HOME": str(root / ".prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "devstack.cli", "demo", "--dir", "demo"],
            cwd=root,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"the demo exited with status {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
            )
        return done.stdout.replace(f"{root}/", "")


def block(output: str) -> str:
    """The README's block for one run's output."""
    return f"{BEGIN}\n```text\n$ {COMMAND}\n{output.rstrip()}\n```\n{END}"


def current_block(readme: str) -> str:
    """The block between the markers (markers included); an error if they are missing."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return readme[start : end + len(END)]


def normalise(text: str) -> str:
    """The text with what varies between runs replaced by placeholders."""
    for name in set(_RUN_NAME.findall(text)):
        text = text.replace(name, "<run>")
    for pattern, placeholder in _VARYING:
        text = pattern.sub(placeholder, text)
    return text


def differences(readme: str, output: str) -> list[str]:
    """A unified diff of the README's block against this output, normalised; empty when equal."""
    shown = normalise(current_block(readme)).splitlines()
    printed = normalise(block(output)).splitlines()
    return list(
        difflib.unified_diff(shown, printed, "README.md", f"`{COMMAND}` now", lineterm="", n=1)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.readme_sample", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    args = parser.parse_args(argv)
    readme = args.readme.read_text(encoding="utf-8")
    output = demo_output()
    diff = differences(readme, output)
    if not diff:
        print(f"{args.readme}: the sample run matches what `{COMMAND}` prints")
        return 0
    if args.check:
        print(f"{args.readme}: the sample run is stale; `make readme-sample` rewrites it:")
        print("\n".join(diff))
        return 1
    args.readme.write_text(readme.replace(current_block(readme), block(output)), encoding="utf-8")
    print(f"wrote the sample run into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
