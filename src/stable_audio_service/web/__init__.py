"""The web playground: a static page (HTML, CSS, JavaScript) served from package files."""

from .routes import router

__all__ = ["router"]
