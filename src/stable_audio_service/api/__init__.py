"""HTTP layer: app factory, schemas, routes. No model code lives here."""

from .app import create_app

__all__ = ["create_app"]
