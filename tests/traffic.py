"""Traffic for the health tests: one JSON inference as the README's curl sends it, readiness, and a bounded closed-loop
load that records every request's outcome (tests/test_supervisor.py on the local server, tests/test_container.py
in the image)."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "ensemble_model"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) tritoned \w+ [\w.]+: (.*)$", re.M)
TEXTS = ["where is my order", "помогите мне", "thank you very much", "the app crashes when I log in"]


def infer(address: str, text: str, timeout: float = 30, model: str = MODEL) -> str:
    body = json.dumps({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]})
    request = urllib.request.Request(f"http://{address}/v2/models/{model}/infer", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return {o["name"]: o["data"] for o in json.load(response)["outputs"]}["label"][0]


def ready(address: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@dataclass
class Load:
    """`workers` threads, each sending the next request as soon as the last one is answered."""

    address: str
    expected: dict[str, str]
    workers: int = 4
    texts: list[str] = field(default_factory=lambda: list(TEXTS))
    results: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, "ok" or the error)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, index: int) -> None:
        while not self.stop.is_set():
            text = self.texts[index % len(self.texts)]
            sent = time.time()
            try:
                label = infer(self.address, text)
                outcome = "ok" if label == self.expected[text] else f"wrong label {label}"
            except urllib.error.HTTPError as error:
                outcome = f"HTTP {error.code}: {error.read()[:200]!r}"
            except OSError as error:
                outcome = repr(error)
            self.results.append((sent, time.time(), outcome))
            index += 1

    def __enter__(self) -> "Load":
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(self.workers)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def failures(self, since: float) -> list[tuple[float, float, str]]:
        return [r for r in self.results if r[1] >= since and r[2] != "ok"]


def gateway_events(log: str, after: float) -> list[tuple[float, str]]:
    """(time, message) of the gateway's log lines at or after `after` (seconds since the epoch)."""
    events = []
    for stamp, message in LOG_LINE.findall(log):
        when = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if when >= after - 0.001:
            events.append((when, message))
    return events


def recovery_figures(log: str, killed: float, instance: str) -> tuple[float, float] | None:
    """(seconds to detection, seconds to the end of the recovery) after a stub was killed at `killed`, from the
    gateway's log; None while the recovery has not ended."""
    events = gateway_events(log, killed)
    detected = [t for t, m in events if "backend process(es) died" in m and instance in m]
    recovered = [t for t, m in events if m.startswith("recovered in")]
    if not detected or not recovered:
        return None
    return detected[0] - killed, recovered[0] - killed


def stubs_of_group(group: int) -> dict[str, int]:
    """instance name -> pid of the Python backend stubs in process group `group` (a server started by
    serve_local.sh: the gateway leads the group, tritonserver and the stubs are in it)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            stat = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and \
                int(stat.rsplit(") ", 1)[1].split()[2]) == group:
            found[argv[-3].decode() if argv[-1] == b"" else argv[-2].decode()] = int(cmdline.parent.name)
    return found
