"""An OpenAPI schema that tells the truth about the loaded model.

The request model's static bounds are the loose outer limits of every family; what a request may
actually ask depends on the model that is loaded (Stable Audio Open 1.0: the design note's 1–30 s,
guidance 1–20, 10–200 steps). Generated clients and fuzzers read `/openapi.json`, so once the model
is loaded the schema carries its defaults and bounds, and drops the fields it cannot serve.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import service
from ..config import Settings

REQUEST_SCHEMA = "StableAudioRequest"
# What the prompt validators enforce (not blank, no control characters), said as a JSON Schema pattern so
# generated clients and fuzzers produce prompts the service accepts.
_CTRL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
PROMPT_PATTERN = rf"^[^{_CTRL}]*[^\s{_CTRL}][^{_CTRL}]*$"
NEGATIVE_PROMPT_PATTERN = rf"^[^{_CTRL}]*$"
# Request fields that only exist when the loaded model declares the capability.
CAPABILITY_FIELDS = {
    "apg_scale": lambda caps: caps.apg_scale is not None,
    "loras": lambda caps: caps.loras,
    "init_noise_level": lambda caps: caps.init_noise_level is not None,
    "init_audio_b64": lambda caps: caps.audio_to_audio,
    "inpaint_audio_b64": lambda caps: caps.inpainting,
    "inpaint_regions": lambda caps: caps.inpainting,
    # long-form audio is a chain of continuations (inpainting)
    "window_s": lambda caps: caps.inpainting,
    "overlap_s": lambda caps: caps.inpainting,
}


def _bounded(prop: dict[str, Any], bound: dict[str, Any]) -> None:
    """Replace a nullable number property's bounds and default with the model's."""
    for variant in prop.get("anyOf", [prop]):
        if variant.get("type") in ("number", "integer"):
            variant.pop("exclusiveMinimum", None)
            variant["minimum"] = bound["minimum"]
            variant["maximum"] = bound["maximum"]
    prop["default"] = bound["default"]


def model_schema(base: dict[str, Any], model: Any, settings: Settings) -> dict[str, Any]:
    """`base` with the request schema narrowed to `model`'s limits and capabilities."""
    schema = copy.deepcopy(base)
    request = schema.get("components", {}).get("schemas", {}).get(REQUEST_SCHEMA)
    if request is None:
        return schema
    props = request["properties"]
    fields = service.request_fields(model, settings)
    for name in ("duration", "guidance_scale", "num_inference_steps", "apg_scale", "init_noise_level"):
        if name in props and fields.get(name):
            _bounded(props[name], fields[name])
    for name, pattern in (("prompt", PROMPT_PATTERN), ("negative_prompt", NEGATIVE_PROMPT_PATTERN)):
        for variant in props.get(name, {}).get("anyOf", [props.get(name, {})]):
            if variant.get("type") == "string":
                variant["pattern"] = pattern
                variant["maxLength"] = min(
                    variant.get("maxLength", settings.max_prompt_chars), settings.max_prompt_chars
                )
    for name, available in CAPABILITY_FIELDS.items():
        if name in props and not available(model.capabilities):
            del props[name]
    schema["info"]["description"] = (
        schema["info"].get("description", "") + f"\n\nLoaded model: {model.name} ({model.family})."
    )
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """`app.openapi()` builds the generic schema once, then narrows it to the loaded model; a bearer scheme
    is declared when a token is configured, so `/docs` can authorise."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "base" not in cache:
            base = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            if settings.api_key:
                base.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                base["security"] = [{"bearer": []}]
            cache["base"] = base
        model = getattr(app.state.service, "model", None)
        if model is None:
            return cache["base"]
        if "model" not in cache:
            cache["model"] = model_schema(cache["base"], model, settings)
        return cache["model"]

    app.openapi = openapi  # type: ignore[method-assign]
