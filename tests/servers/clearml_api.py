"""A ClearML server stand-in (API + files server in one) for the real `clearml` SDK (clearml 2.1.12).

Implemented are exactly the calls the SDK makes to fetch a model or a task artifact, as observed by logging
its requests:
  GET  /auth.login               HTTP basic auth with the access/secret key -> a JWT the SDK decodes for
                                 the API version (401 for wrong credentials)
  *    /v2.x/models.get_by_id    {"model": id} -> the model (uri, system_tags ["package"] for a zipped directory)
  *    /v2.x/tasks.get_by_id     {"task": id} -> the task with execution.artifacts
  GET  /files/<path>             the files server: the uploaded zip archives
Every API call but auth.login must carry the bearer token auth.login issued. Unknown ids get the server's
400 answers (subcode 201 invalid model id / 101 invalid task id); any other endpoint answers 400 and is
recorded, so a test can assert that nothing else was asked for.
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .base import LocalServer, Recorded, Reply

API_VERSION = "2.30"
JWT_KEY = "tritoned-bert-test-signing-key-32b!"


@dataclass(frozen=True)
class ClearMLModel:
    file: str  # path under /files/
    name: str = "classifier"
    package: bool = True  # registered with update_weights_package: a zipped directory


@dataclass(frozen=True)
class ClearMLTask:
    artifacts: dict[str, str]  # artifact name -> path under /files/ of a zipped directory
    name: str = "training"


@dataclass
class ClearMLState:
    access_key: str
    secret_key: str
    files: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, ClearMLModel] = field(default_factory=dict)
    tasks: dict[str, ClearMLTask] = field(default_factory=dict)


def _meta(action: str, code: int, subcode: int, message: str) -> dict[str, object]:
    return {"id": uuid.uuid4().hex, "trx": uuid.uuid4().hex,
            "endpoint": {"name": action, "requested_version": API_VERSION, "actual_version": API_VERSION},
            "result_code": code, "result_subcode": subcode, "result_msg": message, "error_stack": ""}


def _answer(action: str, data: dict[str, object], code: int = 200, subcode: int = 0, message: str = "OK") -> Reply:
    body = json.dumps({"meta": _meta(action, code, subcode, message), "data": data}).encode()
    return Reply(code, body, (("Content-Type", "application/json"),))


class FakeClearML:
    """`with FakeClearML(state) as server:` then CLEARML_API_HOST=CLEARML_FILES_HOST=server.url."""

    def __init__(self, state: ClearMLState) -> None:
        self.state = state
        self._tokens: set[str] = set()
        self._server = LocalServer(self._handle)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def requests(self) -> list[Recorded]:
        return self._server.requests

    def actions(self) -> list[str]:
        """The API actions and file paths asked for, in order (e.g. ["auth.login", "models.get_by_id", "/files/.."])."""
        return [self._action(request) for request in self.requests]

    def __enter__(self) -> "FakeClearML":
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    @staticmethod
    def _action(request: Recorded) -> str:
        path = urlsplit(request.path).path
        return path if path.startswith("/files/") else path.rsplit("/", 1)[-1]

    def _handle(self, request: Recorded) -> Reply:
        action = self._action(request)
        if action.startswith("/files/"):
            content = self.state.files.get(action[len("/files/"):])
            return Reply(404, b"not found") if content is None else Reply(
                200, content, (("Content-Type", "application/zip"),))
        if action == "auth.login":
            return self._login(request)
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self._tokens:
            return _answer(action, {}, 401, 20, "Unauthorized (missing or invalid token)")
        params = json.loads(request.body or b"{}")
        if action == "models.get_by_id":
            return self._model(action, str(params.get("model")))
        if action == "tasks.get_by_id":
            return self._task(action, str(params.get("task")))
        return _answer(action, {}, 400, 0, f"Unsupported endpoint {action} (not implemented by the test server)")

    def _login(self, request: Recorded) -> Reply:
        import jwt

        expected = base64.b64encode(f"{self.state.access_key}:{self.state.secret_key}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return _answer("auth.login", {}, 401, 20, "Unauthorized (invalid credentials)")
        token = jwt.encode({"api_version": API_VERSION, "server_version": "1.17.0", "env": "test",
                            "exp": int(time.time()) + 3600, "identity": {"company": "acme", "user": "tester"}},
                           JWT_KEY, algorithm="HS256")
        self._tokens.add(token)
        return _answer("auth.login", {"token": token})

    def _model(self, action: str, model_id: str) -> Reply:
        model = self.state.models.get(model_id)
        if model is None:
            return _answer(action, {}, 400, 201, f"Invalid model id: id={model_id}")
        return _answer(action, {"model": {
            "id": model_id, "name": model.name, "uri": f"{self.url}/files/{model.file}", "framework": "PyTorch",
            "system_tags": ["package"] if model.package else [], "tags": [], "ready": True, "labels": {},
            "project": "acme-project", "created": "2026-01-01T00:00:00.000+00:00",
        }})

    def _task(self, action: str, task_id: str) -> Reply:
        task = self.state.tasks.get(task_id)
        if task is None:
            return _answer(action, {}, 400, 101, f"Invalid task id: id={task_id}")
        artifacts = [{"key": name, "type": "archive", "mode": "output", "uri": f"{self.url}/files/{path}",
                      "content_size": len(self.state.files.get(path, b"")), "hash": "", "timestamp": 0,
                      "type_data": {"preview": "", "content_type": "application/zip"}}
                     for name, path in task.artifacts.items()]
        return _answer(action, {"task": {
            "id": task_id, "name": task.name, "type": "training", "status": "completed", "project": "acme-project",
            "execution": {"artifacts": artifacts}, "models": {"input": [], "output": []}, "hyperparams": {},
            "configuration": {}, "tags": [], "system_tags": [], "runtime": {},
        }})
