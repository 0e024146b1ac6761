"""Parameter counts of the estimator against independent counts: transformers models and minift models."""
import pytest
import torch
from memory_tiny import PEFT_OPTIONS, tiny_config

from minift.memory.params import METHODS, Method, count_params
from minift.memory.presets import PRESETS, resolve_model
from minift.models.load import build_model
from minift.models.registry import get_family

HF_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel", "gpt2": "GPT2Model", "gpt_neo": "GPTNeoModel",
              "llama": "LlamaForCausalLM"}


def _hf_count(name: str) -> int:
    """Parameters of the transformers model of a preset, built on the meta device (tied weights once)."""
    transformers = pytest.importorskip("transformers")
    d = dict(PRESETS[name])
    config = transformers.AutoConfig.for_model(**d)
    with torch.device("meta"):
        model = getattr(transformers, HF_CLASSES[d["model_type"]])(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_counts_match_transformers(name):
    config, _ = resolve_model(name)
    head = "causal-lm" if config.model_type == "llama" else None
    assert count_params(config, head, Method()).total == _hf_count(name)


def test_published_sizes():
    """The sizes the model cards publish: Llama-3.2-3B 3.21B, BERT-base 109.48M, Llama-3-8B 8.03B."""
    assert round(count_params(resolve_model("llama-3.2-3b")[0], "causal-lm", Method()).total / 1e9, 2) == 3.21
    assert round(count_params(resolve_model("bert-base")[0], None, Method()).total / 1e6, 2) == 109.48
    assert round(count_params(resolve_model("llama-3-8b")[0], "causal-lm", Method()).total / 1e9, 2) == 8.03


def _minift_counts(config, head, method):
    from minift.peft.apply import apply

    with torch.device("meta"):
        model = build_model(config, get_family(config.model_type), head)
        if method != "full":
            model = apply(model, method, **PEFT_OPTIONS[method])
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


HEADS = {"bert": ["classification", "token-classification", None], "roberta": ["classification", None],
         "gpt2": ["causal-lm", "classification"], "gpt_neo": ["causal-lm"], "llama": ["causal-lm", "classification"]}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family,head", [(f, h) for f, heads in HEADS.items() for h in heads])
def test_counts_match_minift_models(family, head, method):
    config = tiny_config(family)
    total, trainable = _minift_counts(config, head, method)
    count = count_params(config, head, Method(method, adapter_size=8, prompt_length=5))
    assert (count.total, count.trainable) == (total, trainable)


@pytest.mark.parametrize("name", ["llama-3.2-3b", "gpt-neo-1.3b", "roberta-base"])
def test_preset_lora_counts_match_minift(name):
    config, _ = resolve_model(name)
    head = "causal-lm" if config.is_decoder else "classification"
    total, trainable = _minift_counts(config, head, "lora")
    count = count_params(config, head, Method("lora"))
    assert (count.total, count.trainable) == (total, trainable)
