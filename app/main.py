"""The ingress plane: FastAPI app over a supervisor Runtime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.middleware.cors import CORSMiddleware

from app.docs import install_docs
from app.guard import Guard
from app.head import HeadAsGet
from app.headers import SecurityHeaders
from app.metrics import Metrics
from app.openapi import install_openapi
from app.problems import install_problem_handlers, problem
from app.routes import approvals, bundles, health, mcp, runs, tenant_admin
from app.routes._receipts import ReceiptSlots
from app.stream_slots import StreamSlots

__all__ = ["build_asgi", "create_app"]

def _ui_dir() -> Path:
    """The source tree's ui/ (editable installs, the repo), else what a wheel installed under share/."""
    here = Path(__file__).resolve().parent.parent / "ui"
    if (here / "index.html").is_file():
        return here
    return Path(sys.prefix) / "share" / "stockade" / "ui"


UI_DIR = _ui_dir()


def create_app(rt: Any, *, role_worker: bool = True) -> FastAPI:
    app = FastAPI(title="Stockade", version="0.1.0", docs_url=None, redoc_url=None,  # app/docs.py: no CDN
                  description="Self-hosted, multi-tenant runtime for AI agents. Errors are RFC 9457 problem+json with a stable `code`.")
    rt.metrics = getattr(rt, "metrics", None) or Metrics()
    rt.stream_slots = getattr(rt, "stream_slots", None) or StreamSlots(rt.settings.max_streams_per_tenant)
    rt.receipt_slots = getattr(rt, "receipt_slots", None) or ReceiptSlots()  # big receipts built at once
    rt.role_worker = role_worker
    app.state.runtime = rt
    install_problem_handlers(app)
    install_openapi(app)
    install_docs(app)
    max_body = rt.settings.max_body_bytes

    if rt.settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=rt.settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Idempotent-Replayed"])
    for r in (health.router, health.receipts_router, runs.router, approvals.router, bundles.router, tenant_admin.router, mcp.router):
        app.include_router(r)
    app.add_middleware(HeadAsGet)  # HEAD of a GET resource: that GET without its body
    app.add_middleware(Guard, max_body=max_body, metrics=rt.metrics)  # before CORS and routing
    app.add_middleware(SecurityHeaders)  # outermost: the Guard's refusals get the headers too

    @app.get("/", include_in_schema=False)
    async def root() -> Any:
        return RedirectResponse("/ui/")

    @app.get("/ui/", include_in_schema=False)
    async def ui_index() -> Any:
        index = UI_DIR / "index.html"
        if not index.exists():
            return JSONResponse({"detail": "ui not built"}, status_code=404)
        return FileResponse(index, media_type="text/html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str) -> Any:
        try:  # a name past NAME_MAX (ENAMETOOLONG) or with a NUL raised: a 500 marked retryable
            path = (UI_DIR / name).resolve()
            found = path.parent == UI_DIR and path.is_file()
        except (OSError, ValueError):
            found = False
        if not found:
            return problem("not_found", "no such file", f"/ui/{name}")
        return FileResponse(path)

    return app


def build_asgi(rt: Any, *, role_worker: bool = True) -> Any:
    """The served ASGI app: FastAPI with Socket.IO mounted at /socket.io."""
    from app.socketio_stream import mount_socketio

    app = create_app(rt, role_worker=role_worker)
    return mount_socketio(app, rt)
