"""The local Triton for tests: bench/local_server.py's LocalServer, the one serve_local.sh helper of the tests and
the benchmarks, under the name the tests use. LocalTriton(repository=..., log=..., env=..., extra_args=...).start()
serves on free ports; interrupt() is Ctrl-C, stop() ends whatever is left (see LocalServer)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the bench package

from bench.local_server import LocalServer as LocalTriton  # noqa: E402
from bench.local_server import ServerError, descendants, free_ports, http_ready, process_rss, stop_all  # noqa: E402

__all__ = ["LocalTriton", "ServerError", "descendants", "free_ports", "http_ready", "process_rss", "stop_all"]
