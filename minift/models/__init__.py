"""minift.models: our own PyTorch transformer families, loading Hugging Face checkpoint folders.

``load_pretrained(path, dtype=None, device=None, head=None, num_labels=None)`` → ``TaskModel``;
``from_config(config_or_preset, head=None, num_labels=None, seed=0)`` → a ``TaskModel`` with seeded random weights
(no checkpoint needed); ``save_pretrained(model, folder)`` writes a folder transformers loads. The layer classes
(``BertModel``, ``RobertaModel``, ``GPT2Model``, ...) are importable from here or from their family module; they are
imported on first use, so importing ``minift.models`` imports no family.
"""
import importlib

from minift.models.config import ModelConfig
from minift.models.errors import CheckpointError, ConfigError, ModelLoadError
from minift.models.load import load_pretrained
from minift.models.random_init import from_config
from minift.models.save import save_pretrained
from minift.models.task_model import TaskModel

# layer class → module that defines it (imported on first access)
_MODULES = {
    "minift.models.bert": ("BertModel", "BertEmbeddings", "BertEncoder", "BertLayer", "BertAttention",
                           "BertSelfAttention", "BertSelfOutput", "BertIntermediate", "BertOutput", "BertPooler"),
    "minift.models.roberta": ("RobertaModel", "RobertaEmbeddings"),
    "minift.models.heads": ("RobertaClassificationHead",),
    "minift.models.gpt2": ("GPT2Model", "GPT2Block", "GPT2Attention", "GPT2MLP"),
    "minift.models.gpt_neo": ("GPTNeoModel", "GPTNeoBlock", "GPTNeoAttention", "GPTNeoSelfAttention"),
    "minift.models.llama": ("LlamaModel", "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP", "LlamaRMSNorm"),
    "minift.models.rope": ("RotaryEmbedding",),
}
_LAYERS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "GPT2MLP",
    "BertAttention",
    "BertEmbeddings",
    "BertEncoder",
    "BertIntermediate",
    "BertLayer",
    "BertModel",
    "BertOutput",
    "BertPooler",
    "BertSelfAttention",
    "BertSelfOutput",
    "CheckpointError",
    "ConfigError",
    "GPT2Attention",
    "GPT2Block",
    "GPT2Model",
    "GPTNeoAttention",
    "GPTNeoBlock",
    "GPTNeoModel",
    "GPTNeoSelfAttention",
    "LlamaAttention",
    "LlamaDecoderLayer",
    "LlamaMLP",
    "LlamaModel",
    "LlamaRMSNorm",
    "ModelConfig",
    "ModelLoadError",
    "RobertaClassificationHead",
    "RobertaEmbeddings",
    "RobertaModel",
    "RotaryEmbedding",
    "TaskModel",
    "from_config",
    "load_pretrained",
    "save_pretrained",
]


def __getattr__(name):
    if name in _LAYERS:
        return getattr(importlib.import_module(_LAYERS[name]), name)
    raise AttributeError(f"module 'minift.models' has no attribute {name!r}")
