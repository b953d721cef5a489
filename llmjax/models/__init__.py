"""Model families. MODELS maps `config.model.arch` to its module class."""

from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Decoder

MODELS = {
    "decoder": Decoder,
}

__all__ = ["MODELS", "Decoder", "ModelConfig"]
