"""Prompt and duration conditioning of Stable Audio 3 (Stability's `T5GemmaConditioner` and `NumberConditioner`).

The prompt goes through transformers' `T5GemmaEncoderModel` loaded from the checkpoint's T5Gemma folder, padded
to `max_length` (256) exactly as Stability's conditioner pads it, so the valid rows match to the bit; padded
rows are then replaced by the checkpoint's learned `padding_embedding`. The encoder always runs in float32:
Stability's conditioner keeps it outside the module tree, so `model.to(float16)` never reaches it. (Stability
loads it with transformers' default dtype, which from transformers 5 is the dtype the folder stores: float32 in
the oracle fixtures.)

A text cache keeps only the valid rows (a few KB instead of 256 x 768 floats); the padded rows are rebuilt
from the padding embedding, which gives the same tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..base import TextEmbeddingCache
from .config import NumberConfig, TextConfig
from .dit import expo_fourier_features


@dataclass(frozen=True)
class EncodedText:
    """One prompt's conditioner output before padding: its valid rows (or all rows for padding mode 'none')."""

    rows: torch.Tensor  # (n, dim) float32: the rows of the valid tokens, or all rows for padding mode "none"
    mask: torch.Tensor  # (max_length,) bool: the tokenizer's attention mask (padding may be on either side)

    @property
    def n_valid(self) -> int:
        return int(self.mask.sum())


class DurationConditioner(nn.Module):
    """`number` conditioner: seconds clamped to [min, max], normalised, expo Fourier features -> Linear.
    The weight lives at `conditioner.conditioners.seconds_total.embedder.embedding.1.*`."""

    def __init__(self, cfg: NumberConfig, output_dim: int, features: int = 256) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = features
        self.linear = nn.Linear(features, output_dim)

    def forward(self, seconds: list[float]) -> torch.Tensor:
        """(B, output_dim): the duration token and the global conditioning. The seconds are normalised in float32
        and cast to the weights' dtype before the Fourier features, as Stability's `NumberConditioner` casts them:
        in float16 that rounding, not the features' float32 arithmetic, decides the embedding."""
        device = self.linear.weight.device
        floats = torch.tensor([float(s) for s in seconds]).to(device)
        floats = floats.clamp(self.cfg.min_val, self.cfg.max_val)
        normalized = (floats - self.cfg.min_val) / (self.cfg.max_val - self.cfg.min_val)
        normalized = normalized.to(self.linear.weight.dtype)
        return self.linear(expo_fourier_features(normalized, self.features))

    def load(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        self.linear.weight.data.copy_(tensors[f"{prefix}embedder.embedding.1.weight"])
        self.linear.bias.data.copy_(tensors[f"{prefix}embedder.embedding.1.bias"])


class TextConditioner(nn.Module):
    """T5Gemma encoder + tokenizer + the checkpoint's padding handling (`padding_mode`)."""

    def __init__(
        self,
        cfg: TextConfig,
        folder: Path,
        output_dim: int,
        cache_size: int = 256,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer, T5GemmaEncoderModel
        from transformers.utils import logging as hf_logging

        self.cfg = cfg
        self.output_dim = output_dim
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            config = AutoConfig.from_pretrained(str(folder))
            config.is_encoder_decoder = False
            encoder = T5GemmaEncoderModel.from_pretrained(str(folder), config=config, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        # kept out of the module tree, like Stability's conditioner: `.to(dtype)` of the model must not cast it
        self.__dict__["encoder"] = encoder.eval().requires_grad_(False).to(device)
        width = int(config.encoder.hidden_size)
        self.proj_out: nn.Module = (
            nn.Linear(width, output_dim) if (width != output_dim or cfg.project_out) else nn.Identity()
        )
        self.padding_embedding = nn.Parameter(torch.zeros(output_dim), requires_grad=False)
        self.cache = TextEmbeddingCache(cache_size)
        logging.getLogger("stable_audio_service").debug("T5Gemma loaded from %s", folder)

    @property
    def encoder_device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def encoder_dtype(self) -> torch.dtype:
        """float32 whatever the model's dtype (see the module docstring), so GET /models can say so."""
        return next(self.encoder.parameters()).dtype

    def load(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        key = f"{prefix}padding_embedding"
        if key in tensors:
            self.padding_embedding.data.copy_(tensors[key])
        elif self.cfg.padding_mode == "learned":
            raise KeyError(key)
        if isinstance(self.proj_out, nn.Linear):
            self.proj_out.weight.data.copy_(tensors[f"{prefix}proj_out.weight"])
            self.proj_out.bias.data.copy_(tensors[f"{prefix}proj_out.bias"])

    def tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            [text], truncation=True, max_length=self.cfg.max_length, padding="max_length", return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"].to(torch.bool)

    @torch.no_grad()
    def encode(self, text: str) -> EncodedText:
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        ids, mask = self.tokenize(text)
        device = self.encoder_device
        hidden = self.encoder(input_ids=ids.to(device), attention_mask=mask.to(device))["last_hidden_state"]
        if isinstance(self.proj_out, nn.Linear):
            hidden = self.proj_out(hidden.to(self.proj_out.weight.dtype).to(self.proj_out.weight.device))
        hidden = hidden[0].float().cpu()
        mask = mask[0]
        rows = hidden.clone() if self.cfg.padding_mode == "none" else hidden[mask].clone()
        out = EncodedText(rows, mask)
        self.cache.put(text, out)
        return out

    def padded(self, encoded: EncodedText, *, negative: bool = False) -> torch.Tensor:
        """(1, max_length, dim): the conditioner's output (padded rows by `padding_mode`). A negative prompt's
        padded rows are zero instead: Stability's DiT replaces masked negative tokens with the null embedding."""
        length, dim = self.cfg.max_length, self.output_dim
        mask = encoded.mask
        if encoded.rows.shape[0] == length:  # padding mode "none": the encoder's own rows everywhere
            out = encoded.rows.clone().unsqueeze(0)
            if negative:
                out[0, ~mask] = 0.0
            return out
        out = torch.zeros(1, length, dim, dtype=torch.float32)
        out[0, mask] = encoded.rows
        if not negative and self.cfg.padding_mode == "learned":
            out[0, ~mask] = self.padding_embedding.detach().float().cpu()
        return out
