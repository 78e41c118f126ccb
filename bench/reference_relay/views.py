"""The relay: the raw body goes to the upstream, the answer (JSON or SSE) comes back as it arrives.

No auth, no routing, no logging, no body parsing: the least the gateway's stack can do.
The client is built the way providers/upstream.py builds the gateway's, so both sides
of the comparison use the same transport, pool limits and timeouts.
"""
import asyncio

import httpx
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from ninja import NinjaAPI

LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0)
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
FORWARD_HEADERS = {"content-type": "application/json", "accept": "application/json",
                   "accept-encoding": "identity", "authorization": "Bearer sk-reference"}

api = NinjaAPI(title="reference relay", urls_namespace="reference", docs_url=None, openapi_url=None)
_clients: dict[int, httpx.AsyncClient] = {}


def _client() -> httpx.AsyncClient:
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        if settings.UPSTREAM_TRANSPORT == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            client = httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS), timeout=TIMEOUT, trust_env=False)
        else:
            client = httpx.AsyncClient(limits=LIMITS, timeout=TIMEOUT, trust_env=False)
        _clients[loop_id] = client
    return client


async def _relay(response):
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()


@api.post("/v1/chat/completions")
async def chat_completions(request):
    client = _client()
    upstream = client.build_request("POST", settings.UPSTREAM_BASE_URL + "/chat/completions",
                                    headers=FORWARD_HEADERS, content=request.body)
    response = await client.send(upstream, stream=True)
    content_type = response.headers.get("content-type", "application/json")
    if content_type.startswith("text/event-stream"):
        return StreamingHttpResponse(_relay(response), status=response.status_code, content_type=content_type,
                                     headers={"Cache-Control": "no-cache"})
    try:
        content = await response.aread()
    finally:
        await response.aclose()
    return HttpResponse(content, status=response.status_code, content_type=content_type)
