"""The demo page at /."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "static"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@lru_cache(maxsize=1)
def _page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: its one inline script allowed by its SHA-256 (CSP Level 2), so
    no other script (an injected one, an inline event handler) runs, and the page may not be framed."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = _INLINE_SCRIPT.findall(page)
    if len(scripts) != 1 or "<script " in page:
        raise RuntimeError(f"{STATIC / 'index.html'}: expected one inline <script> and no other, found {len(scripts)}")
    # The browser hashes the script's text as parsed: line breaks normalised to LF (a CRLF checkout) and UTF-8.
    text = scripts[0].replace("\r\n", "\n").replace("\r", "\n")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    policy = (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        f"style-src 'self' 'unsafe-inline'; script-src 'sha256-{digest}'; connect-src 'self'; "
        "base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
    )
    return page, policy


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    page, policy = _page()
    return HTMLResponse(
        page,
        headers={
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": policy,
        },
    )
