"""Outer limits of request fields that are the same for every model, shared by the request path (service.py)
and the HTTP contract (api/schemas.py).

They live below both, so the request path does not import the HTTP layer above it (and any other ingress can
share the same bounds).
"""

from __future__ import annotations

MAX_SEED = 2**32 - 1
# LoRA: Stability's code takes any float strength (its Gradio slider spans 0-10); negative strengths subtract the
# adapter's direction. Each adapter adds low-rank work to every targeted layer, hence a small per-request maximum.
MAX_LORAS_PER_REQUEST = 4
MAX_LORA_STRENGTH = 10.0
# A layer filter (substrings of DiT layer names where an adapter does not act): a few dozen substrings of a layer
# name's length are plenty; bracket ranges are bounded separately when expanded (adapters.MAX_FILTER_EXPANSION).
MAX_LORA_LAYER_FILTERS = 32
MAX_LORA_FILTER_CHARS = 200
# Loudness targets (LUFS, ITU-R BS.1770): below -70 LUFS BS.1770's absolute gate measures nothing; 0 LUFS is full
# scale. Targets above about -8 LUFS are reached only by dense audio: the true-peak ceiling caps the gain first.
MIN_LOUDNESS_LUFS = -70.0
MAX_LOUDNESS_LUFS = 0.0
# Takes of one request (`num_outputs`): each is a row of the same batch, so a request costs at most this many rows.
MAX_OUTPUTS = 8
# Long-form audio (a chain of continuation windows, engine/longform.py): the outer bound of any server's
# STABLE_AUDIO_MAX_LONGFORM_S, and the most windows one request may chain (its work is windows x steps).
MAX_LONGFORM_ANY_S = 3600.0
MAX_LONGFORM_WINDOWS = 256
# The overlap a long-form request continues from when it names none: this, or a quarter of the window if shorter.
DEFAULT_OVERLAP_S = 10.0
