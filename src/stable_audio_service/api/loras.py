"""`GET /loras` and `POST /loras/reload`: the LoRA adapters the loaded model can apply per request.

Every file of the adapter directory is listed, usable or not: a broken or incompatible file shows why (`fits`,
`problem`) and never stops the service. Shapes are checked against the loaded base when the directory is scanned
(at load, on reload, and when the directory changes), not per request.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..service import lora_controls
from .routes import ERROR_RESPONSES, ClientDep
from .schemas import MAX_LORA_STRENGTH, MAX_LORAS_PER_REQUEST

router = APIRouter(responses=ERROR_RESPONSES, tags=["loras"])


class LoraInfo(BaseModel):
    name: str = Field(..., description="What a request's `loras[].name` says: the file stem.")
    file: str
    adapter_type: str | None = Field(None, description="lora, dora-rows, dora-cols or lora-xs (legacy dora resolved).")
    rank: int | None = None
    alpha: float | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    modules: list[str] = Field(default_factory=list, description="Modules the file has tensors for.")
    targeted_modules: int = Field(0, description="Modules it acts on (its include/exclude filter; DoRA acts on all).")
    tensors: int = 0
    size_bytes: int = 0
    memory_bytes: int = Field(0, description="Memory once loaded (float32).")
    batching: str | None = Field(
        None,
        description="shared: batches with any other request (per-row low-rank terms on a shared base forward); "
        "grouped: only with requests of the same adapters and strengths (merged weights, dora-cols).",
    )
    fits: bool = Field(..., description="Usable with the loaded model (shapes checked when the directory was read).")
    problem: str | None = Field(None, description="Why it is not usable.")
    warnings: list[str] = Field(default_factory=list)


class LoraList(BaseModel):
    enabled: bool = Field(..., description="The loaded model serves adapters (STABLE_AUDIO_LORA_DIR is set).")
    model: str
    directory_error: str | None = None
    max_per_request: int = MAX_LORAS_PER_REQUEST
    strength: dict[str, float] = {"default": 1.0, "minimum": -MAX_LORA_STRENGTH, "maximum": MAX_LORA_STRENGTH}
    cache: dict[str, Any] | None = None
    controls: dict[str, Any] = Field(
        default_factory=lora_controls,
        description="Each request item's controls, with defaults and bounds: strength (the DiT's), "
        "conditioner_strength (default: strength), interval [min, max] of sigma in which it acts on the DiT, "
        "layer_filter (substrings of the layer names below where it does not act).",
    )
    layer_names: list[str] = Field(
        default_factory=list, description="The DiT layer names a layer_filter is matched against."
    )
    loras: list[LoraInfo]


def _listing(model: Any, rescan: bool) -> LoraList:
    enabled = model.capabilities.loras
    adapters = model.adapters  # None on the Ray ingress's weightless model view
    if adapters is None or not enabled:
        why = "this process does not hold the model (Ray ingress): the replicas check adapters" if enabled else None
        return LoraList(enabled=enabled, model=model.name, directory_error=why, loras=[])
    listing = adapters.listing(rescan)
    return LoraList(
        enabled=True,
        model=model.name,
        directory_error=listing["directory_error"],
        cache=listing["cache"],
        layer_names=listing["layer_names"],
        loras=[LoraInfo(**info) for info in listing["loras"]],
    )


@router.get("/loras", response_model=LoraList)
async def list_loras(client: ClientDep) -> Any:
    """The adapters of the configured directory, each with whether it fits the loaded model and why not."""
    return await run_in_threadpool(_listing, client.model, False)


@router.post("/loras/reload", response_model=LoraList)
async def reload_loras(client: ClientDep) -> Any:
    """Read the directory again (new, changed and removed files); requests already running keep their adapters."""
    return await run_in_threadpool(_listing, client.model, True)
