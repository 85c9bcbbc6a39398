"""The lock-down of every tritonserver this project starts, in one place (serve_local.sh and the image).

Open to everyone: inference, health, metadata, model configuration and statistics. Restricted: the APIs in
RESTRICTED_APIS answer only to requests that carry the header ADMIN_HEADER (gRPC metadata
"triton-grpc-protocol-" + ADMIN_HEADER) with the admin key: $TRITONED_ADMIN_KEY, or a random key nobody knows
when it is unset (closed). Loading and unloading models is refused to every client, with or without the key:
only the gateway's supervisor reloads a model whose backend process died.

`python -m gateway.lockdown` checks $TRITONED_ADMIN_KEY and exits 2 with the rule when it is unfit (the scripts
call it before anything starts).
"""
from __future__ import annotations

import os
import re
import secrets
import sys

RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
ADMIN_HEADER = "tritoned-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton's prefix for gRPC metadata
ADMIN_KEY_ENV = "TRITONED_ADMIN_KEY"
ADMIN_KEY_MIN_LENGTH = 16
_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9._~+/=:,-]+")
KEY_RULE = (f"{ADMIN_KEY_ENV} must be at least {ADMIN_KEY_MIN_LENGTH} characters of A-Z a-z 0-9 . _ ~ + / = : , - "
            "(e.g. $(openssl rand -hex 16))")


class UnfitKey(ValueError):
    """$TRITONED_ADMIN_KEY is set but too short or has other characters; the message is KEY_RULE."""


def admin_key(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """$TRITONED_ADMIN_KEY when set and fit, else a fresh random key (the restricted APIs stay closed)."""
    key = environ.get(ADMIN_KEY_ENV, "")
    if not key:
        return secrets.token_hex(16)
    if len(key) < ADMIN_KEY_MIN_LENGTH or not _KEY_CHARACTERS.fullmatch(key):
        raise UnfitKey(KEY_RULE)
    return key


def tritonserver_args(key: str) -> list[str]:
    """The tritonserver options of the lock-down, with admin key `key`."""
    return [
        f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={key}",
        f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={key}",
    ]


def describe() -> str:
    """The lock-down in words, for the scripts' --help."""
    return (f"Open to everyone: inference, health, metadata, model configuration, statistics; metrics (GET /metrics).\n"
            f"The {RESTRICTED_APIS} APIs answer only to requests with the header\n"
            f"  {ADMIN_HEADER}: <key>                       (HTTP)\n"
            f"  {GRPC_ADMIN_HEADER}: <key>  (gRPC metadata)\n"
            f"where <key> is ${ADMIN_KEY_ENV} (at least {ADMIN_KEY_MIN_LENGTH} characters, e.g. $(openssl rand -hex 16));\n"
            f"unset, the key is random and never shown: closed. Loading and unloading models is refused to every\n"
            f"client, with or without the key.")


def main(argv: list[str] | None = None) -> int:
    if (argv if argv is not None else sys.argv[1:]) == ["--describe"]:
        print(describe())
        return 0
    try:
        admin_key()
    except UnfitKey as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
