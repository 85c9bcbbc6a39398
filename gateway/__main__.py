"""python -m gateway [options] -- TRITONSERVER [ARGS...] (see --help)."""
import sys

from .settings import parse


def run() -> int:
    settings = parse(sys.argv[1:])
    from .app import main  # after argument parsing: --help needs no aiohttp or grpc

    return main(settings)


sys.exit(run())
