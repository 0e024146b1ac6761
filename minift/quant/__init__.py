"""minift.quant: QLoRA's 4-bit NormalFloat base (Dettmers et al., "QLoRA", https://arxiv.org/abs/2305.14314, §3).

- ``nf4.py``: the NF4 code values, ``quantize_nf4`` / ``dequantize_nf4`` (block-wise absmax, optional double
  quantisation), ``nf4_bytes`` (the byte cost), ``dequantize_bytes`` (what one dequantisation allocates).
- ``linear.py``: ``NF4Linear``, a frozen linear layer stored as NF4 buffers, dequantised per matmul.
- ``quantize.py``: ``NF4Config``; ``quantize_model`` (swap a built model's block linears for NF4 ones);
  ``StateQuantizer`` (quantise while ``minift.models.load_pretrained(path, quantize="nf4")`` reads the checkpoint);
  ``compute_dtype_for``; ``quantized_bytes`` (what a model's tensors occupy); ``nf4_layers``.

The PEFT layers on an NF4 base (``LoRANF4Linear``, ``AdapterNF4Linear``) live in ``minift.peft``, which sits above
this package: ``minift.peft.apply`` picks them when the layer it adapts is an ``NF4Linear``.

Example::

    from minift.models import load_pretrained
    from minift.peft import apply

    model = load_pretrained("path/to/llama", dtype="bfloat16", quantize="nf4")  # 4-bit blocks, bf16 elsewhere
    model = apply(model, "lora", r=16, alpha=32)  # LoRA on the NF4 layers; the codes never change
"""
from minift.quant.linear import NF4Linear
from minift.quant.nf4 import NF4Weight, dequantize_bytes, dequantize_nf4, nf4_bytes, nf4_code, quantize_nf4
from minift.quant.quantize import (
    QUANTIZE_FORMATS,
    NF4Config,
    StateQuantizer,
    compute_dtype_for,
    nf4_config,
    nf4_layers,
    quantize_model,
    quantized_bytes,
)

__all__ = [
    "QUANTIZE_FORMATS",
    "NF4Config",
    "NF4Linear",
    "NF4Weight",
    "StateQuantizer",
    "compute_dtype_for",
    "dequantize_bytes",
    "dequantize_nf4",
    "nf4_bytes",
    "nf4_code",
    "nf4_config",
    "nf4_layers",
    "quantize_model",
    "quantize_nf4",
    "quantized_bytes",
]
