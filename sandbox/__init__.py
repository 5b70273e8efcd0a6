"""A local Lightspeed-compatible API server for tests, demos and benchmarks."""

from sandbox.catalog import load_catalog
from sandbox.server import Fault, RecordedRequest, SandboxServer, serve

__all__ = ["Fault", "RecordedRequest", "SandboxServer", "load_catalog", "serve"]
