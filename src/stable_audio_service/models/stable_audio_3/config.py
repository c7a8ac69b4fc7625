"""A typed view of an official Stable Audio 3 `model_config.json`.

Stability's factory (`stable_audio_3/factory.py`) builds the model from this one file; we read the same keys
so that the structure (small or medium), the window and every DiT / conditioner setting come from the
checkpoint itself, never from a table keyed by model name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Defaults of Stability's code where a config may leave a key out.
DEFAULT_DURATION_PADDING_S = 6.0  # `StableAudioModel.generate(duration_padding_sec=6.0)`
DEFAULT_CHUNK_SIZE = 32  # `_adapt_sample_size`: encoder_config.get("chunk_size", 32)


class ConfigError(ValueError):
    """model_config.json is not a Stable Audio 3 config this service can run."""


@dataclass(frozen=True)
class DiTConfig:
    """`model.diffusion.config`: the `DiffusionTransformer` arguments."""

    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int
    global_cond_dim: int
    local_add_cond_dim: int
    num_memory_tokens: int
    timestep_features_dim: int
    timestep_features_logsnr: bool
    differential: bool
    qk_norm: str
    qk_norm_eps: float
    norm_eps: float
    norm_force_fp32: bool
    ff_mult: float
    project_cond_tokens: bool
    project_global_cond: bool

    @property
    def dim_heads(self) -> int:
        """Width of one attention head (the config gives the model width and the head count)."""
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class NumberConfig:
    """A `number` conditioner (the duration, `seconds_total`)."""

    min_val: float
    max_val: float
    fourier_features_type: str


@dataclass(frozen=True)
class TextConfig:
    """The `t5gemma` prompt conditioner: where its encoder lives and how it pads."""

    max_length: int
    padding_mode: str
    model_path: str | None
    repo_id: str | None
    subfolder: str | None
    project_out: bool


@dataclass(frozen=True)
class SA3Config:
    raw: dict[str, Any] = field(repr=False)
    sample_rate: int
    channels: int
    sample_size: int  # samples of the longest window the checkpoint was made for
    hop: int  # audio samples per latent frame (`downsampling_ratio`)
    latent_align: int  # latent length is a multiple of this (`chunk_size // stride`)
    structure: str  # "small" (SAME-S, chunked attention) or "medium" (SAME-L, band attention)
    dit: DiTConfig
    text_id: str
    text: TextConfig
    duration_id: str
    duration: NumberConfig
    cond_dim: int
    cross_attention_ids: tuple[str, ...]
    global_ids: tuple[str, ...]
    local_add_ids: tuple[str, ...]
    sampling_shift: dict[str, Any] | None  # `sampling_distribution_shift_options`; None: the default LogSNRShift

    @property
    def longest_clip_s(self) -> float:
        """The longest clip, in whole seconds: Stability's Gradio interface caps `seconds_total` at
        `sample_size // sample_rate` (small 120 s, medium 380 s). Near that limit the 6 s duration padding
        shrinks, because `generate()` clamps the window to `sample_size`."""
        return float(self.sample_size // self.sample_rate)


def _get(mapping: dict[str, Any], *keys: str) -> Any:
    node: Any = mapping
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"model_config.json has no {'.'.join(keys)}")
        node = node[key]
    return node


def parse_config(raw: dict[str, Any]) -> SA3Config:
    """Read the keys Stability's factory reads; refuse configs of another model type with one message."""
    if not isinstance(raw, dict):
        raise ConfigError("model_config.json is not a JSON object")
    if raw.get("model_type") not in ("diffusion_cond", "diffusion_cond_inpaint"):
        raise ConfigError(f"model_type {raw.get('model_type')!r} is not a Stable Audio 3 diffusion model")
    model = _get(raw, "model")
    diffusion = _get(model, "diffusion")
    if diffusion.get("type", "dit") != "dit" or diffusion.get("diffusion_objective") != "rf_denoiser":
        raise ConfigError("only the `dit` / `rf_denoiser` diffusion of Stable Audio 3 is supported")
    d = _get(diffusion, "config")
    if d.get("transformer_type", "continuous_transformer") != "continuous_transformer":
        raise ConfigError(f"transformer_type {d.get('transformer_type')!r} is not supported")
    if d.get("global_cond_type") != "adaLN" or d.get("patch_size", 1) != 1:
        raise ConfigError("the DiT must use adaLN global conditioning and patch_size 1 (as Stable Audio 3 does)")
    if d.get("timestep_features_type") != "expo" or d.get("norm_type") != "rms_norm":
        raise ConfigError("the DiT must use expo timestep features and rms_norm (as Stable Audio 3 does)")
    attn = d.get("attn_kwargs", {})
    dit = DiTConfig(
        io_channels=int(d["io_channels"]),
        embed_dim=int(d["embed_dim"]),
        depth=int(d["depth"]),
        num_heads=int(d["num_heads"]),
        cond_token_dim=int(d.get("cond_token_dim", 0)),
        global_cond_dim=int(d.get("global_cond_dim", 0)),
        local_add_cond_dim=int(d.get("local_add_cond_dim", 0) or 0),
        num_memory_tokens=int(d.get("num_memory_tokens", 0)),
        timestep_features_dim=int(d.get("timestep_features_dim", 256)),
        timestep_features_logsnr=bool(d.get("timestep_features_logsnr", False)),
        differential=bool(attn.get("differential", False)),
        qk_norm=str(attn.get("qk_norm", "none")),
        qk_norm_eps=float(attn.get("qk_norm_eps", 1e-6)),  # `Attention`'s default
        norm_eps=float(d.get("norm_kwargs", {}).get("eps", 1e-5)),  # RMSNorm's default in Stability's code
        norm_force_fp32=bool(d.get("norm_kwargs", {}).get("force_fp32", False)),
        ff_mult=float(d.get("ff_kwargs", {}).get("mult", 4)),
        project_cond_tokens=bool(d.get("project_cond_tokens", True)),
        project_global_cond=bool(d.get("project_global_cond", True)),
    )
    if not dit.project_global_cond:
        raise ConfigError("project_global_cond must be true: adaLN adds the timestep embedding to the global embedding")
    if dit.qk_norm not in ("rms", "none"):
        raise ConfigError(f"qk_norm {dit.qk_norm!r} is not supported (Stable Audio 3 uses 'rms')")

    pre = _get(model, "pretransform", "config")
    encoder = _get(pre, "encoder", "config")
    hop = int(pre.get("downsampling_ratio") or 0)
    if hop <= 0:
        raise ConfigError("model.pretransform.config.downsampling_ratio is missing")
    stride = int(_get(encoder, "strides")[0])
    latent_align = max(1, int(encoder.get("chunk_size", DEFAULT_CHUNK_SIZE)) // stride)
    structure = "medium" if encoder.get("sliding_window") is not None else "small"

    conditioning = _get(model, "conditioning")
    text_id = duration_id = None
    text = duration = None
    for item in conditioning.get("configs", []):
        cfg = item.get("config", {})
        if item.get("type") == "t5gemma":
            text_id = item["id"]
            text = TextConfig(
                max_length=int(cfg.get("max_length", 128)),
                padding_mode=str(cfg.get("padding_mode", "zero")),
                model_path=cfg.get("model_path"),
                repo_id=cfg.get("repo_id"),
                subfolder=cfg.get("subfolder"),
                project_out=bool(cfg.get("project_out", False)),
            )
        elif item.get("type") == "number":
            duration_id = item["id"]
            duration = NumberConfig(
                min_val=float(cfg.get("min_val", 0)),
                max_val=float(cfg.get("max_val", 1)),
                fourier_features_type=str(cfg.get("fourier_features_type", "learned")),
            )
        else:
            raise ConfigError(f"conditioner type {item.get('type')!r} is not supported")
    if text is None or duration is None or text_id is None or duration_id is None:
        raise ConfigError("model.conditioning must hold a t5gemma prompt and a number (seconds_total) conditioner")
    if duration.fourier_features_type != "expo":
        raise ConfigError("the seconds_total conditioner must use expo Fourier features (as Stable Audio 3 does)")
    if text.padding_mode not in ("learned", "zero", "none"):
        raise ConfigError(f"padding_mode {text.padding_mode!r} is not supported")
    cross_ids = tuple(diffusion.get("cross_attention_cond_ids", []))
    global_ids = tuple(diffusion.get("global_cond_ids", []))
    local_ids = tuple(diffusion.get("local_add_cond_ids", []))
    if cross_ids != (text_id, duration_id) or global_ids != (duration_id,):
        raise ConfigError(
            "expected cross_attention_cond_ids [prompt, seconds_total] and global_cond_ids [seconds_total]"
        )
    if local_ids not in ((), ("inpaint_mask", "inpaint_masked_input")):
        raise ConfigError(f"local_add_cond_ids {list(local_ids)} are not supported")
    if local_ids and dit.local_add_cond_dim != dit.io_channels + 1:
        raise ConfigError("local_add_cond_dim must be io_channels + 1 (the inpainting mask and masked latents)")
    return SA3Config(
        raw=raw,
        sample_rate=int(_get(raw, "sample_rate")),
        channels=int(raw.get("audio_channels", pre.get("io_channels", 2))),
        sample_size=int(_get(raw, "sample_size")),
        hop=hop,
        latent_align=latent_align,
        structure=structure,
        dit=dit,
        text_id=text_id,
        text=text,
        duration_id=duration_id,
        duration=duration,
        cond_dim=int(conditioning.get("cond_dim", 768)),
        cross_attention_ids=cross_ids,
        global_ids=global_ids,
        local_add_ids=local_ids,
        sampling_shift=diffusion.get("sampling_distribution_shift_options"),
    )
