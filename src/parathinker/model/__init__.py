"""The decoder (Qwen2 / Llama + thought embeddings), its config and checkpoint I/O."""

from .attention import Attention, DenseAttention
from .config import ModelConfig
from .loader import load_model, save_model
from .model import ParaThinkerForCausalLM

__all__ = ["Attention", "DenseAttention", "ModelConfig", "ParaThinkerForCausalLM", "load_model", "save_model"]
