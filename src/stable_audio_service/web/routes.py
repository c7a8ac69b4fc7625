"""Serve the playground at `/` and its files at `/static/{name}`, read with importlib.resources.

The page's code is a set of native ES modules (static/app.js imports the others), served as
text/javascript: a module served with another type is refused by the browser.

The page needs no token to load: it only holds code. Every API call it makes carries the
bearer token the person types in, when the service asks for one.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

JS_TYPE = "text/javascript; charset=utf-8"  # browsers refuse a module script served as anything else


def _static_types() -> dict[str, str]:
    """What /static serves: the stylesheet and the page's JavaScript modules (every `.js` file here, so a
    new module needs no entry of its own); nothing else in the package (no `.py`, not index.html)."""
    names = sorted(p.name for p in resources.files(__package__).iterdir() if p.is_file())
    return {"style.css": "text/css; charset=utf-8", **{n: JS_TYPE for n in names if n.endswith(".js")}}


STATIC_TYPES = _static_types()

# The page only talks to its own origin; no inline script, no third-party anything. Its module scripts
# (static/app.js and what it imports) are same-origin, which script-src 'self' allows.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@cache  # names come only from index.html and STATIC_TYPES: a few dozen files at most
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


@router.get("/", response_class=HTMLResponse)
def index() -> Response:
    return Response(
        _read("index.html"),
        media_type="text/html; charset=utf-8",
        headers={**HEADERS, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"},
    )


@router.get("/static/{name}")
def static(name: str) -> Response:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:  # a fixed list: nothing else in the package is reachable
        raise HTTPException(404, detail=f"no static file {name!r}")
    return Response(_read(name), media_type=media_type, headers=HEADERS)
