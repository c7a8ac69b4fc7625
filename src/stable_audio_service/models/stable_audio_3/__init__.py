"""Stable Audio 3 as Stability's own `stable_audio_3` library computes it, loaded from the official
single-checkpoint format (model_config.json + model.safetensors + the T5Gemma subfolder)."""
