"""A text-to-audio service for Stability AI's open audio models, built on diffusers."""

__version__ = "0.1.0"
SERVICE = "stable-audio"
