"""Model families. MODELS maps `config.model.arch` to its module class."""

from llmjax.models.config import ModelConfig
from llmjax.models.decoder import Decoder
from llmjax.models.encoder import Encoder, EncoderWithHeads
from llmjax.models.encoder_decoder import EncoderDecoder

MODELS = {
    "decoder": Decoder,
    "encoder": EncoderWithHeads,
    "encoder_decoder": EncoderDecoder,
}

__all__ = ["MODELS", "Decoder", "Encoder", "EncoderDecoder", "EncoderWithHeads", "ModelConfig"]
