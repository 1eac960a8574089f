"""The attention zoo: one module per method, each with parallel, chunked and recurrent forms."""
from .base import LinearizedAttention
from .gsa import GSAAttention
from .hedgehog import HedgehogAttention
from .lizard import LizardAttention

ATTENTION_CLASSES = {
    "hedgehog": HedgehogAttention,
    "lizard": LizardAttention,
    "gsa": GSAAttention,
}

__all__ = ["LinearizedAttention", "HedgehogAttention", "LizardAttention", "GSAAttention", "ATTENTION_CLASSES"]
