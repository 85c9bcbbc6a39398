"""The HF inference JSON (POST /, POST /models/{name}) and TEI (POST /predict, POST /rerank, GET /info) routes of
the public HTTP port: a translation layer, not a second server. Each request is read within the ensemble's body
limit and the bytes-in-flight budget, parsed once, turned into KServe v2 requests to the ensemble (gateway/
classify.py) and sent through the HTTP front's own inference path (supervisor retry; Triton counts them in its
metrics); the ensemble's scores come back in the asked API's shape (gateway/hf_api.py, gateway/tei_api.py).
The model's facts come from the repository manifest tritoned.json (gateway/manifest.py)."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from . import checks, classify, hf_api, manifest, tei_api
from .checks import Rejected
from .classify import ApiError

if TYPE_CHECKING:
    from .http_front import HttpFront

HF_MODEL_ROUTE = re.compile(r"/models/([^/]+)")  # POST /models/{name}: the HF inference JSON, as POST /
TEI_ROUTES = ("/predict", "/rerank")
INFO_VERSION = "tritoned-gateway"  # /info's "version": this server, not a TEI release
JSON = checks.JSON


class ApiFront:
    def __init__(self, front: "HttpFront", max_concurrent_requests: int) -> None:
        self.front = front
        self.max_concurrent_requests = max_concurrent_requests
        self.repository: Path | None = None  # the model repository tritonserver serves (manifest.repository_of)
        self._manifest: manifest.Manifest | None = None
        self._token_counter: tei_api.TokenCounter | None = None

    @staticmethod
    def serves(path: str, method: str) -> bool:
        if method == "POST":
            return path == "/" or path in TEI_ROUTES or HF_MODEL_ROUTE.fullmatch(path) is not None
        return method == "GET" and path == "/info"

    def body_limit(self, path: str) -> int | None:
        """The largest body of a request to `path` when it is an API route (the ensemble's), else None."""
        if not self.serves(path, "POST"):
            return None
        try:
            return self.front.catalog.body_limit(self.manifest().ensemble)
        except ApiError:
            return None

    async def handle(self, request: web.Request, path: str) -> web.Response:
        if path == "/info":
            return self._info(request)
        if path in TEI_ROUTES:
            return await self._tei(request, path)
        return await self._hf(request, path)

    def manifest(self) -> manifest.Manifest:
        """The served model's manifest, read once; ApiError (503) naming the file and the fix when unreadable."""
        if self._manifest is None:
            if self.repository is None:
                raise ApiError(503, "the model repository is not known (the gateway was started without "
                                    "--repository DIR): the HF and TEI APIs need its tritoned.json",
                               "Unhealthy")
            try:
                self._manifest = manifest.load(self.repository)
            except manifest.ManifestError as failure:
                raise ApiError(503, str(failure), "Unhealthy") from None
        return self._manifest

    def _token_counter_of(self, facts: manifest.Manifest) -> tei_api.TokenCounter:
        if self._token_counter is None:
            self._token_counter = tei_api.TokenCounter(self.repository, facts.max_sequence_length)
        return self._token_counter

    async def _translated(self, request: web.Request, build: Callable[[Any, manifest.Manifest], Any],
                          model_name: str | None = None) -> tuple[Any, list[list[float]]]:
        """Read and parse the body within the ensemble's limits, `build(parsed, manifest)` -> (job, extra), run the
        job through the ensemble: (extra, one row of scores per item)."""
        facts = self.manifest()
        if model_name is not None and model_name != facts.ensemble:
            raise ApiError(404, f"model '{model_name[:100]}' is not served here: this server serves "
                                f"'{facts.ensemble}' (POST /models/{facts.ensemble} or POST /)")
        front = self.front
        limit = front.catalog.body_limit(facts.ensemble)
        async with front.admit(request, limit):
            body = await front.read_body(request, limit)
            job, extra = build(checks.parse_json(body, front.limits.max_json_depth), facts)
            rows = await self._classify(job, facts)
        return extra, rows

    async def _classify(self, job: classify.Job, facts: manifest.Manifest) -> list[list[float]]:
        model = self.front.catalog.get(facts.ensemble)
        batch = model.max_batch_size if model is not None and model.max_batch_size > 0 else facts.max_batch_size
        path = f"/v2/models/{facts.ensemble}/infer"
        headers = {"Content-Type": JSON}
        answers = await asyncio.gather(*(self.front.forward_inference(path, body, headers, facts.ensemble)
                                         for body in classify.requests_of(job, facts, batch)))
        rows: list[list[float]] = []
        for status, data, _ in answers:
            if status != 200:
                message = classify.error_message(data)
                if status == 503:
                    raise ApiError(503, message, "Unhealthy")
                if 400 <= status < 500:
                    raise ApiError(status, message, "Validation")
                raise ApiError(status, message, "Backend")
            rows.extend(classify.rows_of(data, len(facts.labels)))
        if len(rows) != len(job.items):
            raise ApiError(502, f"the ensemble answered {len(rows)} rows for {len(job.items)} texts", "Backend")
        return rows

    async def _hf(self, request: web.Request, path: str) -> web.Response:
        match = HF_MODEL_ROUTE.fullmatch(path)
        try:
            top_k, rows = await self._translated(request, _hf_build, match.group(1) if match else None)
        except ApiError as failure:
            status = failure.status if failure.status >= 500 or failure.status in (404, 413, 429) else 400
            return _hf_error(status, failure.message)
        except Rejected as rejected:
            return _hf_error(rejected.http_status, rejected.message, close=rejected.http_status == 413)
        return _json(hf_api.answer(self.manifest(), rows, top_k))

    async def _tei(self, request: web.Request, path: str) -> web.Response:
        try:
            if path == "/predict":
                batched, rows = await self._translated(request, self._predict_build)
                return _json(tei_api.predict_answer(self.manifest(), rows, batched))
            (texts, return_text), rows = await self._translated(request, self._rerank_build)
            return _json(tei_api.rerank_answer(rows, texts, return_text))
        except ApiError as failure:  # an unreadable answer of the ensemble is TEI's 424 (Backend)
            return _tei_error(424 if failure.status == 502 else failure.status, failure.message, failure.error_type)
        except Rejected as rejected:
            # serde's refusal of a body is 422 in TEI; a body too large, late or over the budget keeps its status
            status = 422 if rejected.http_status == 400 else rejected.http_status
            return _tei_error(status, rejected.message, "Overloaded" if status == 503 else "Validation",
                              close=status == 413)

    def _predict_build(self, parsed: Any, facts: manifest.Manifest) -> tuple[classify.Job, bool]:
        return tei_api.predict_job(parsed, facts, self._token_counter_of(facts))

    def _rerank_build(self, parsed: Any, facts: manifest.Manifest) -> tuple[classify.Job, tuple[list[str], bool]]:
        job, texts, return_text = tei_api.rerank_job(parsed, facts, self._token_counter_of(facts))
        return job, (texts, return_text)

    def _info(self, request: web.Request) -> web.Response:
        if request.content_length:
            return _tei_error(422, "GET /info carries no body", "Validation")
        try:
            facts = self.manifest()
        except ApiError as failure:
            return _tei_error(failure.status, failure.message, failure.error_type)
        return _json(tei_api.info(facts, INFO_VERSION, self.max_concurrent_requests))


def _hf_build(parsed: Any, facts: manifest.Manifest) -> tuple[classify.Job, Any]:
    return hf_api.parse(parsed, facts)


def _json(value: Any) -> web.Response:
    return web.Response(body=json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(),
                        content_type=JSON)


def _hf_error(status: int, message: str, close: bool = False) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if close:
        response.force_close()
    return response


def _tei_error(status: int, message: str, error_type: str, close: bool = False) -> web.Response:
    response = web.json_response(tei_api.error_body(message, error_type), status=status)
    if close:
        response.force_close()
    return response
