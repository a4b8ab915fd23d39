"""What the REST routes share: the dependency that opens a call (the caller's principal,
request id, cache bypass, through the one accounting path), and the answer as JSON or as
server-sent events, closing the call with its status."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from gateway.accounting import RequestContext
from gateway.errors import APIError

if TYPE_CHECKING:
    from gateway.core import Gateway


def gateway_of(request: Request) -> Gateway:
    """The Gateway this app serves (set by gateway.rest.create_app)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


def opens(route: str) -> Callable[[Request], RequestContext]:
    """A dependency that opens the call for ``route``: 401 without a valid key."""

    def open_call(request: Request) -> RequestContext:
        ctx = gateway_of(request).accounting.open(route, request.headers)
        request.state.request_id = ctx.request_id  # error responses carry it too
        return ctx

    return open_call


def response_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {"X-Request-Id": ctx.request_id}
    if ctx.cache_status:
        headers["X-Tessera-Cache"] = ctx.cache_status
    return headers


async def respond(
    request: Request,
    ctx: RequestContext,
    work: Awaitable[BaseModel | AsyncIterator[BaseModel]],
    stream: bool = False,
) -> Response:
    """Run the handler's work and answer: JSON, or SSE ending in [DONE] for a stream; the
    call is closed with the status it ended with (errors become OpenAI error bodies)."""
    accounting = gateway_of(request).accounting
    try:
        result = await (work if stream else _until_disconnect(request, work))
    except Exception as e:
        raise accounting.fail(ctx, ctx.route, e) from e
    if isinstance(result, BaseModel):
        accounting.close(ctx, 200)
        return JSONResponse(result.model_dump(mode="json"), headers=response_headers(ctx))
    return StreamingResponse(
        _sse(result, request, ctx),
        media_type="text/event-stream",
        headers={**response_headers(ctx), "Cache-Control": "no-cache"},
    )


async def _sse(
    chunks: AsyncIterator[BaseModel], request: Request, ctx: RequestContext
) -> AsyncIterator[bytes]:
    accounting = gateway_of(request).accounting
    closed = False
    try:
        async for chunk in chunks:
            yield b"data: " + chunk.model_dump_json(exclude_none=False).encode() + b"\n\n"
    except Exception as e:
        error, closed = accounting.fail(ctx, ctx.route, e), True
        yield b"data: " + json.dumps(error.body()).encode() + b"\n\n"
    else:
        accounting.close(ctx, 200)
        closed = True
    finally:
        if not closed:  # the client went away mid-stream
            accounting.close(ctx, 499)
    yield b"data: [DONE]\n\n"


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await work, cancelling it (and so aborting upstream) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise APIError(499, "client closed the request", "invalid_request_error")
    finally:
        if not task.done():
            task.cancel()
