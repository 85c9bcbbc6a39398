"""The gateway's HTTP client to Triton's internal port: pooled keep-alive connections, no automatic compression,
the admin key only where the gateway itself needs it (the supervisor)."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from . import lockdown
from .catalog import Catalog, Model
from .settings import Limits

log = logging.getLogger("tritoned.upstream")


class Upstream:
    def __init__(self, port: int, admin_key: str, limits: Limits) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.admin_key = admin_key
        self.limits = limits
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=30, force_close=False),
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=limits.upstream_timeout_s))

    async def close(self) -> None:
        await self.session.close()

    async def status(self, path: str, timeout: float = 2.0) -> int:
        """HTTP status of GET path; 0 when Triton does not answer."""
        try:
            async with self.session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0

    async def get_json(self, path: str, timeout: float = 10.0) -> Any:
        async with self.session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
            return json.loads(body)

    async def admin_post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        """POST with the admin key (repository index, load, unload); RuntimeError when Triton refuses."""
        headers = {lockdown.ADMIN_HEADER: self.admin_key, "Content-Type": "application/json"}
        async with self.session.post(self.base + path, data=json.dumps(body or {}).encode(), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.read()
            if response.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {response.status}: {text[:300]!r}")
            return json.loads(text) if text else None

    async def index(self) -> dict[str, str]:
        """Model name -> state (READY, UNAVAILABLE, LOADING...) from the repository index."""
        return {entry["name"]: entry.get("state", "") for entry in await self.admin_post("/v2/repository/index")}

    async def catalog(self) -> Catalog:
        """Metadata and configuration of every READY model."""
        models = {}
        for name, state in (await self.index()).items():
            if state != "READY":
                continue
            metadata = await self.get_json(f"/v2/models/{name}")
            config = await self.get_json(f"/v2/models/{name}/config")
            models[name] = Model.from_triton(metadata, config)
        return Catalog(models=models, limits=self.limits)

    async def infer(self, model: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        async with self.session.post(f"{self.base}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, await response.read()
