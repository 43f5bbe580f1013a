"""The search page: plain HTML, CSS and JS shipped in the package, no build step, no CDN."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse((files("app") / "static" / "index.html").read_text(encoding="utf-8"))
