"""minift.peft: parameter-efficient fine-tuning layers, injected into a loaded model by swapping modules.

- ``lora.py``: ``LoRAPath`` (the side path) on an ``nn.Linear`` — ``LoRALinear``, explicit ``merge()`` /
  ``unmerge()`` — or on a 4-bit ``minift.quant.NF4Linear`` — ``LoRANF4Linear`` (QLoRA).
- ``adapter.py``: bottleneck adapters (Houlsby / Pfeiffer placements) wrapping sub-layer output projections
  (``AdapterLinear``, ``AdapterNF4Linear`` on a 4-bit base).
- ``bitfit.py``: which parameters are biases (BitFit adds no module).
- ``prompt.py``: ``SoftPrompt`` and the ``PromptModel`` wrapper (prompt tuning).
- ``config.py``: one typed config per method (``LoRAConfig``, ``AdapterConfig``, ``BitFitConfig``, ``PromptConfig``)
  and ``Method`` (a method, its config and whether the head trains).
- ``apply.py``: ``apply(model, method, **options)``, ``trainable_summary``, ``merge`` / ``unmerge``.
- ``io.py``: ``save_trainable`` / ``load_trainable`` (safetensors + JSON).
- ``export.py``: ``export_peft`` (peft's adapter format) and ``save_merged`` (an HF folder).

Example::

    from minift.models import load_pretrained
    from minift.peft import apply, export_peft, save_merged, save_trainable, trainable_summary

    model = load_pretrained("path/to/minilm", head="classification", num_labels=2)
    model = apply(model, "lora", r=8, alpha=16, targets=["query", "value"])  # the head trains too
    print(trainable_summary(model))  # trainable params: ... || all params: ... || trainable%: ...
    ...  # train the parameters with requires_grad
    save_trainable(model, "run/peft")  # LoRA matrices + head, reloaded by load_trainable(fresh_model, "run/peft")
    export_peft(model, "run/hf-peft")  # PeftModel.from_pretrained(transformers_model, "run/hf-peft")
    save_merged(model, "run/merged")  # AutoModelForSequenceClassification.from_pretrained("run/merged")
"""
from minift.peft.adapter import AdapterLinear, AdapterNF4Linear, Bottleneck
from minift.peft.apply import apply, merge, peft_modules, trainable_parameters, trainable_summary, unmerge
from minift.peft.config import (
    METHODS,
    AdapterConfig,
    BitFitConfig,
    LoRAConfig,
    Method,
    PromptConfig,
    method_config,
)
from minift.peft.export import export_peft, save_merged
from minift.peft.io import load_trainable, save_trainable
from minift.peft.lora import LoRALinear, LoRANF4Linear
from minift.peft.prompt import PromptModel, SoftPrompt

__all__ = [
    "METHODS", "AdapterConfig", "AdapterLinear", "AdapterNF4Linear", "BitFitConfig", "Bottleneck", "LoRAConfig",
    "LoRALinear", "LoRANF4Linear", "Method",
    "PromptConfig", "PromptModel", "SoftPrompt", "apply", "export_peft", "load_trainable", "merge", "method_config",
    "peft_modules", "save_merged", "save_trainable", "trainable_parameters", "trainable_summary", "unmerge",
]
