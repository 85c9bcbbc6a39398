"""End-to-end liveness check: exit 0 only when a probe text sent to the public HTTP port is answered with a
label. The image's HEALTHCHECK and a Kubernetes liveness probe run it as /opt/tritoned/healthcheck; locally:
    python -m gateway.healthcheck --url 127.0.0.1:8000 --model ensemble_model
Standard library only (it starts in ~50 ms and costs one short inference)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import manifest, probe, settings


def _call(url: str, body: bytes | None, deadline: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=max(0.1, deadline - time.monotonic())) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check(base: str, model: str, text: str, timeout: float) -> str | None:
    """None when healthy, else what is wrong."""
    deadline = time.monotonic() + timeout
    try:
        status, answer = _call(f"{base}/v2/models/{model}", None, deadline)
        if status != 200:
            return f"metadata of {model}: HTTP {status}: {answer[:200].decode(errors='replace')}"
        metadata = json.loads(answer)
        body = probe.request_body(metadata, text)
        if body is None:
            return f"{model} has an input that is not text: no probe possible"
        status, answer = _call(f"{base}/v2/models/{model}/infer", body, deadline)
    except (OSError, ValueError) as error:
        return f"{base}: {error}"
    return probe.answer_problem(metadata, status, answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("TRITONED_HEALTHCHECK_URL", "127.0.0.1:8000"),
                        help="the public HTTP address (default 127.0.0.1:8000) [TRITONED_HEALTHCHECK_URL]")
    parser.add_argument("--model", default=os.environ.get("TRITONED_HEALTHCHECK_MODEL"),
                        help="model to probe (default: the ensemble that --repository's manifest names) "
                             "[TRITONED_HEALTHCHECK_MODEL]")
    variable = settings.variable_of(settings.REPOSITORY_FLAG)
    parser.add_argument(settings.REPOSITORY_FLAG, type=Path, default=os.environ.get(variable),
                        help=f"model repository whose manifest {manifest.FILE_NAME} names the ensemble (default: the "
                             f"gateway's, [{variable}], which the image sets)")
    parser.add_argument("--timeout", type=float, default=4.0,
                        help="seconds for the whole check (default 4: Docker's and the chart's probe timeout is 5)")
    parser.add_argument("--text", default=probe.TEXT, help="probe text")
    args = parser.parse_args(argv)
    if not args.model and not args.repository:
        print(f"unhealthy: give --model or {settings.REPOSITORY_FLAG} ({variable} is not set)", file=sys.stderr)
        return 2
    try:
        model = args.model or manifest.load(args.repository).ensemble
    except manifest.ManifestError as error:
        print(f"unhealthy: no --model given and {error}", file=sys.stderr)
        return 2
    base = args.url if "://" in args.url else f"http://{args.url}"
    problem = check(base.rstrip("/"), model, args.text, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"healthy: {model} answered the probe with a label")
    return 0


if __name__ == "__main__":
    sys.exit(main())
