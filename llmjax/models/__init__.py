"""Model families. MODELS maps `config.model.arch` to its module class."""

from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Decoder
from llmjax.models.encoder import Encoder, EncoderWithHeads

MODELS = {
    "decoder": Decoder,
    "encoder": EncoderWithHeads,
}

__all__ = ["MODELS", "Decoder", "Encoder", "EncoderWithHeads", "ModelConfig"]
