"""Find and read an official Stable Audio 3 checkpoint: `model_config.json` + `model.safetensors` + the T5Gemma
folder that the prompt conditioner names.

Stability publishes each model (`stabilityai/stable-audio-3-small-music`, `-small-sfx`, `-medium` and their
`-base` variants) as one repository: the config, one safetensors file (DiT under `model.model.*`, SAME under
`pretransform.model.*`, conditioners under `conditioner.conditioners.*`) and a T5Gemma subfolder (config, weights,
tokenizer). The conditioner's `model_path` or `repo_id` plus `subfolder` say where the text encoder is; Stability's
code loads it with `from_pretrained(model_path or repo_id, subfolder=...)`, so `"."` is the checkpoint's own folder
and a `repo_id` equal to the checkpoint's repository is that folder too.

Every failure is one `ModelLoadError` naming what is missing, where we looked and how to get it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..common import ModelLoadError
from .config import ConfigError, SA3Config, parse_config

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
# Tensors of the root checkpoint that Stability's loader skips (its T5Gemma lives outside the module tree and
# is loaded from the subfolder); some checkpoints carry them, none needs them.
UNUSED_PREFIXES = ("conditioner.conditioners.prompt.model.",)
DEFAULT_TEXT_ENCODER = "google/t5gemma-b-b-ul2"  # `T5GemmaConditioner(model_name=...)` default


@dataclass(frozen=True)
class CheckpointFiles:
    root: Path
    config_path: Path
    weights_path: Path
    text_encoder: Path
    repo_id: str | None  # the hub repository the checkpoint came from, when known


def _how_to_get(repo_id: str | None) -> str:
    repo = repo_id or "stabilityai/stable-audio-3-small-music"
    return (
        f"To get it: accept the licence at https://huggingface.co/{repo} (gated: Stability AI Community License and "
        f"the Gemma terms), then `HF_TOKEN=... huggingface-cli download {repo} --local-dir DIR` and serve DIR, or "
        f"`stable-audio-service make-tiny DIR --family sa3` for a random-weight model that runs offline."
    )


def repo_id_of(path: Path) -> str | None:
    """`owner/name` of a Hugging Face cache snapshot (`.../models--owner--name/snapshots/<rev>`)."""
    for part in reversed(path.resolve().parts):
        match = re.fullmatch(r"models--([^/]+?)--(.+)", part)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    return None


def _snapshot(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """The repository from the HF cache, else from the hub (gated repos need HF_TOKEN)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=allow_patterns))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"no files for {repo_id!r}: not in the Hugging Face cache and the hub could not be reached "
            f"({type(exc).__name__}: {reason}). {_how_to_get(repo_id)}"
        ) from None


def is_official_checkpoint(path: Path) -> bool:
    """Whether `path` is in Stability's format (its `model_config.json` is what the family is recognised by)."""
    return (path / CONFIG_FILE).is_file()


def resolve_checkpoint(source: str | Path) -> CheckpointFiles:
    """A local directory, or a hub id (`owner/name`) through the HF cache; then its text-encoder folder."""
    path = Path(source).expanduser()
    repo_id: str | None
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{path} is a file; expected a Stable Audio 3 checkpoint directory. {_how_to_get(None)}"
            )
        repo_id = repo_id_of(path)
    elif isinstance(source, str) and not source.startswith(("/", ".", "~")) and source.count("/") == 1:
        repo_id = source
        path = _snapshot(source)
    else:
        raise ModelLoadError(f"checkpoint directory {path} does not exist. {_how_to_get(None)}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"{path} is missing {' and '.join(missing)}: a Stable Audio 3 checkpoint is one {CONFIG_FILE} plus one "
            f"{WEIGHTS_FILE} and the T5Gemma folder its config names. {_how_to_get(repo_id)}"
        )
    config = read_config(path / CONFIG_FILE)
    text_dir = text_encoder_dir(path, repo_id, config)
    return CheckpointFiles(path, path / CONFIG_FILE, path / WEIGHTS_FILE, text_dir, repo_id)


def read_config(config_path: Path) -> SA3Config:
    """The typed config, with any read or parse failure turned into one `ModelLoadError` naming the file."""
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} cannot be read: {type(exc).__name__}: {exc}") from None
    try:
        return parse_config(raw)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: {exc}") from None


def text_encoder_dir(root: Path, repo_id: str | None, config: SA3Config) -> Path:
    """Where `from_pretrained(model_path or repo_id, subfolder)` looks, checked for config, weights and tokenizer."""
    text = config.text
    sub = text.subfolder or ""
    if text.model_path is not None:
        base = Path(text.model_path).expanduser()
        base = base if base.is_absolute() else root / base
        where = f"model_path {text.model_path!r} (relative to {root})"
    else:
        hub_id = text.repo_id or DEFAULT_TEXT_ENCODER
        if hub_id == repo_id or (root / sub).is_dir():
            # the checkpoint's own repository, or a local copy of it laid out the same way
            base, where = root, f"repo_id {hub_id!r}, looked in this checkpoint's folder"
        else:
            where = f"repo_id {hub_id!r}, looked in {root / sub} and the Hugging Face cache"
            try:
                base = _snapshot(hub_id, [f"{sub}/*"] if sub else None)
            except ModelLoadError as exc:
                raise ModelLoadError(
                    f"the T5Gemma text encoder of {root} is missing (the prompt conditioner's {where}, subfolder "
                    f"{sub!r}): {exc}"
                ) from None
    folder = base / sub if sub else base
    checks = {
        "text encoder config (config.json)": ["config.json"],
        "text encoder weights (model.safetensors)": [
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
        ],
        "tokenizer (tokenizer.json or tokenizer.model)": ["tokenizer.json", "tokenizer.model"],
    }
    missing = [what for what, names in checks.items() if not any((folder / n).is_file() for n in names)]
    if missing:
        raise ModelLoadError(
            f"the T5Gemma text encoder of {root} is incomplete: missing {', '.join(missing)} in {folder} "
            f"(the prompt conditioner's {where}, subfolder {sub!r}). {_how_to_get(repo_id)}"
        )
    return folder


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def load_tensors(weights_path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor the service uses (the root file's unused T5Gemma copy is not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt", device=device) as fh:
            return {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith(UNUSED_PREFIXES)}
    except Exception as exc:
        raise ModelLoadError(f"{weights_path} cannot be read: {type(exc).__name__}: {exc}") from None


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], shown_prefix: str = "") -> None:
    """Load `state` into `module` only when it fits exactly, else raise ValueError naming every missing, unexpected
    and mis-shaped tensor (as `shown_prefix + name`): a checkpoint that does not fit its config must say where,
    not load half its weights or fail deep inside torch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{shown_prefix}{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]

    def head(items: Sequence[str]) -> str:
        return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

    problems = [
        f"{what}: {head(items)}"
        for what, items in (
            ("missing", [shown_prefix + k for k in missing]),
            ("unexpected", [shown_prefix + k for k in unexpected]),
            ("shape mismatch", mismatched),
        )
        if items
    ]
    if problems:
        raise ValueError("; ".join(problems))
    module.load_state_dict(dict(state), strict=True)


def count_parameters(path: Path) -> dict[str, int]:
    """Parameters by part, from safetensors headers alone (no weights read): `dit`, `autoencoder`,
    `conditioners` (duration + padding embedding) and `text_encoder` (the T5Gemma folder)."""
    files = resolve_checkpoint(path)
    parts = {"dit": 0, "autoencoder": 0, "conditioners": 0, "text_encoder": 0}
    for key, info in _header(files.weights_path).items():
        if key == "__metadata__" or key.startswith(UNUSED_PREFIXES):
            continue
        n = math.prod(info["shape"])
        if key.startswith("model.model."):
            parts["dit"] += n
        elif key.startswith("pretransform."):
            parts["autoencoder"] += n
        else:
            parts["conditioners"] += n
    for file in files.text_encoder.glob("*.safetensors"):
        parts["text_encoder"] += sum(
            math.prod(info["shape"]) for key, info in _header(file).items() if key != "__metadata__"
        )
    return parts
