"""Model sources: GGUF files, Hugging Face directories and random ("dummy") weights, all
loaded into one ModelBundle of float32 Hugging Face-named weights plus a tokenizer."""

from engine.model_source.arch import ArchConfig
from engine.model_source.cache import CACHE_FORMAT_VERSION
from engine.model_source.dummy import PRESETS as DUMMY_PRESETS
from engine.model_source.errors import ModelSourceError
from engine.model_source.loader import ModelBundle, default_model_path, load_model
from engine.model_source.tokenizer import Tokenizer

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DUMMY_PRESETS",
    "ArchConfig",
    "ModelBundle",
    "ModelSourceError",
    "Tokenizer",
    "default_model_path",
    "load_model",
]
