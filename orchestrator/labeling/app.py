"""The labeling service's HTTP API and the labeler's page, an ASGI app (FastAPI) over a Store.

    GET  /api/me                         who the token is: {"name", "admin"}
    GET  /api/tasks/next                 {"task_id", "prompt", "answers": [{"id", "text"}]}, or 204
    POST /api/tasks/{task_id}/ranking    {"ranking": [[ids best], [tied ids], ...], "ratings":
                                         {id: 1-7}, "flags": {id: [names]}, "not_rankable": false}
    POST /api/tasks              admin:  {"rows": [{"prompt", "responses"}], "overlap", "batch"}
    GET  /api/export             admin:  JSONL rows in the reward model's rankings schema
    GET  /api/status             admin:  counts, agreement, flagged labelers
    GET  /                               the labeler's page

Every request but the page's carries `Authorization: Bearer <token>`. A bad request is a 4xx whose
JSON body {"error": "..."} names the field; the store commits a ranking before the answer leaves.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from instructray.orchestrator.labeling.requests import FLAGS, RATING_RANGE, LabelingError
from instructray.orchestrator.labeling.store import Store

MAX_BODY_BYTES = 256 * 1024  # a ranking; publishing (admin) may send up to PUBLISH_MAX_BYTES
PUBLISH_MAX_BYTES = 64 * 1024 * 1024


def create_app(store: Store) -> FastAPI:
    """The service over `store` (which it does not close)."""
    app = FastAPI(title="InstructRay labeling", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(LabelingError)
    async def refused(_: Request, e: LabelingError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{field}: {first.get('msg', 'invalid')}"}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    async def labeler(request: Request, admin: bool = False):
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise LabelingError(401, "Authorization: missing 'Bearer <token>'")
        who = await run_in_threadpool(store.labeler, token.strip())
        if admin and not who.admin:
            raise LabelingError(403, "Authorization: this needs an admin's token")
        return who

    async def body(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise LabelingError(413, f"body: larger than {limit} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise LabelingError(413, f"body: larger than {limit} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise LabelingError(400, "body: not JSON") from None

    @app.get("/api/me")
    async def me(request: Request) -> dict[str, Any]:
        who = await labeler(request)
        return {
            "name": who.name,
            "admin": who.admin,
            "flags": list(FLAGS),
            "ratings": list(RATING_RANGE),
        }

    @app.get("/api/tasks/next")
    async def next_task(request: Request) -> Response:
        who = await labeler(request)
        shown = await run_in_threadpool(store.next_task, who)
        if shown is None:
            return Response(status_code=204)
        return JSONResponse(shown.to_json())

    @app.post("/api/tasks/{task_id}/ranking")
    async def rank(task_id: int, request: Request) -> dict[str, Any]:
        who = await labeler(request)
        ranking_id = await run_in_threadpool(store.submit, who, task_id, await body(request))
        return {"ranking_id": ranking_id}

    @app.post("/api/tasks")
    async def publish(request: Request) -> dict[str, Any]:
        await labeler(request, admin=True)
        data = await body(request, PUBLISH_MAX_BYTES)
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise LabelingError(400, "rows: must be a list of tasks")
        overlap = data.get("overlap", 1)
        if isinstance(overlap, bool) or not isinstance(overlap, int):
            raise LabelingError(400, "overlap: must be an integer >= 1")
        batch = data.get("batch", "")
        if not isinstance(batch, str):
            raise LabelingError(400, "batch: must be a string")
        ids = await run_in_threadpool(store.publish, data["rows"], overlap, batch)
        return {"task_ids": ids}

    @app.get("/api/export")
    async def export(
        request: Request, since_id: int = 0, gold: bool = False, consensus: bool = False
    ) -> Response:
        await labeler(request, admin=True)
        rows = await run_in_threadpool(
            lambda: store.export(since_id=since_id, gold=gold, consensus=consensus)
        )
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Response(text, media_type="application/x-ndjson")

    @app.get("/api/status")
    async def status(request: Request, batch: str | None = None) -> dict[str, Any]:
        await labeler(request, admin=True)
        return await run_in_threadpool(store.status, batch)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files(__package__).joinpath("page.html").read_text()
        return HTMLResponse(
            html,
            headers={
                # the page runs only its own script; model output is shown as text, never HTML
                "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                "style-src 'self' 'unsafe-inline'; img-src 'none'; object-src 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return app
