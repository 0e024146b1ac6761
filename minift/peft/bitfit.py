"""BitFit: train only the bias terms.

Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models",
https://arxiv.org/abs/2106.10199. BitFit adds no module: it is only a choice of which parameters keep
``requires_grad`` (``apply.py`` makes the choice; this file says which parameters are biases).

Which parameters count as "biases" is decided by the seed report's count, which we reproduce: BitFit on a
RoBERTa-base classifier (2 labels) with the head's weights frozen trains 102,914 parameters. With C = 768,
F = 3072, 12 layers:

- per layer: q/k/v biases 3C + attention-output dense bias C + attention LayerNorm bias C + intermediate bias F
  + output dense bias C + output LayerNorm bias C = 7C + F = 5,376 + 3,072 = 8,448; times 12 layers = 101,376;
- embeddings LayerNorm bias: C = 768 -> 102,144;
- head biases (``classifier.dense.bias`` C and ``classifier.out_proj.bias`` 2) -> 102,914.

So the set is *every ``bias`` parameter*, LayerNorm biases included and LayerNorm weights (gains) excluded:
adding the 25 LayerNorm weights would give 122,114, and dropping the LayerNorm biases 83,714. This is also
the BitFit paper's definition (Section 2: "the bias terms", the LayerNorm gains are not among them).
"""
from __future__ import annotations

from torch import nn


def bias_params(module: nn.Module, prefix: str = "") -> dict[str, nn.Parameter]:
    """Every parameter registered under the attribute name ``bias`` in ``module`` and its children.

    Selected by structure (the local parameter name of each sub-module), so a weight whose *path* happens to
    contain "bias" is never picked up. Returns ``{qualified name: parameter}`` with ``prefix`` prepended.
    """
    found = {}
    for module_name, sub in module.named_modules():
        p = sub._parameters.get("bias")
        if p is not None:
            name = f"{module_name}.bias" if module_name else "bias"
            found[f"{prefix}{name}"] = p
    return found
