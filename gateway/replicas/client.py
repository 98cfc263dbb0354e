"""HTTP client of one vLLM OpenAI server replica (`python -m vllm.entrypoints.openai.api_server`).

The replica must run with `--enable-lora` and the environment variable
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, which adds vLLM's runtime adapter endpoints
(vllm/entrypoints/serve/lora/api_router.py):

- `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: 200 with a text body; 400 when the
  name is already loaded (so a load is idempotent here), 404 when the path has no adapter;
- `POST /v1/unload_lora_adapter {"lora_name"}`: 200; 404 when the name is not loaded (already
  gone: also fine);
- `GET /health`: 200 while the engine lives, 503 once it died.

`lora_path` is read by the replica, so adapter folders must sit on a filesystem the replicas
see under the same path (the store's blobs on a shared path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

__all__ = ["AdapterRefusedError", "ReplicaClient", "ReplicaDownError"]


# A generation may take minutes; a connect that takes seconds means the replica is gone.
_TIMEOUT = httpx.Timeout(300.0, connect=2.0)


class ReplicaDownError(RuntimeError):
    """The replica did not answer: connection refused, timed out, or cut mid-answer.

    `sent` is True when the replica may still be working on the request (a read timeout):
    running it elsewhere too could run it twice at once. It is False when the replica surely
    never saw it (connection refused) or dropped the connection before answering: then it
    died with the request, whose result is lost with it, the client has seen nothing, and a
    generation has no effect but compute, so the request can run on another replica.
    """

    def __init__(self, replica: str, message: str, *, sent: bool) -> None:
        super().__init__(f"replica {replica}: {message}")
        self.replica = replica
        self.sent = sent


class AdapterRefusedError(RuntimeError):
    """The replica answered but refused to load the adapter (bad files, wrong base...)."""

    def __init__(self, replica: str, adapter: str, status: int, message: str) -> None:
        super().__init__(f"replica {replica} refused adapter {adapter!r} ({status}): {message}")
        self.replica = replica
        self.adapter = adapter
        self.status = status


def _error_message(response: httpx.Response) -> str:
    """vLLM's `{"error": {"message": ...}}`, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))
    return response.text[:200]


class ReplicaClient:
    """One replica's base URL and connection pool."""

    def __init__(
        self,
        url: str,
        *,
        timeout: httpx.Timeout | float = _TIMEOUT,
        health_timeout_s: float = 1.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"a replica URL must be http(s)://host[:port], got {url!r}")
        self.url = str(parsed).rstrip("/")
        self.health_timeout_s = health_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=headers, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> bool:
        """True when `/health` answers 200 within the health timeout."""
        try:
            response = await self._http.get("/health", timeout=self.health_timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def load_adapter(self, name: str, path: str) -> None:
        response = await self._send(
            "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}
        )
        if response.status_code == 200:
            return
        message = _error_message(response)
        if response.status_code == 400 and "already been loaded" in message:
            return  # it held it already (e.g. our bookkeeping was reset): same outcome
        raise AdapterRefusedError(self.url, name, response.status_code, message)

    async def unload_adapter(self, name: str) -> None:
        response = await self._send("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code in (200, 404):  # 404: not loaded there, which is the goal
            return
        raise AdapterRefusedError(self.url, name, response.status_code, _error_message(response))

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """Forward a non-streamed request; error answers are returned for the caller to relay."""
        return await self._send("POST", path, body)

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """Forward a streamed request; the response's status is known before its body."""
        request = self._http.build_request("POST", path, json=body)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._down(exc) from exc
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        # Error statuses are answers, relayed by the caller; the health check (not one
        # request's 500) decides whether the replica is down.
        try:
            return await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._down(exc) from exc

    def _down(self, exc: httpx.HTTPError) -> ReplicaDownError:
        # A replica killed while requests reach it still completes TCP handshakes from its
        # listen backlog and then resets them: a dropped connection (no answer at all) is
        # as safe to run elsewhere as a refused one.
        dropped = httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError
        sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | dropped)
        return ReplicaDownError(self.url, f"{type(exc).__name__}: {exc}", sent=sent)
