"""The web app: two static pages (conversation, speech) and their assets, served as plain files.

No build step: the pages are HTML with ES modules under ``web/static/`` that call the HTTP API of this
service (``/v1/...``) and its Realtime WebSocket. Everything is served from here, nothing from a CDN.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent / "web"

# The files are small and change with the code: browsers keep them but revalidate (ETag → 304) on every load,
# so a new release is never hidden behind a stale cached script.
REVALIDATE = {"Cache-Control": "no-cache"}


class _RevalidatedStaticFiles(StaticFiles):
    """StaticFiles (conditional requests, no paths outside its directory) with ``Cache-Control: no-cache``."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(REVALIDATE)
        return response


router = APIRouter(include_in_schema=False)


@router.get("/")
async def conversation_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=REVALIDATE)


@router.get("/speech")
async def speech_page() -> FileResponse:
    return FileResponse(WEB_DIR / "speech.html", media_type="text/html", headers=REVALIDATE)


router.mount("/static", _RevalidatedStaticFiles(directory=WEB_DIR / "static"), name="web-static")
