"""Soft prompts (prompt tuning): ``n`` trainable virtual-token embeddings in front of the input.

Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning", https://arxiv.org/abs/2104.08691.
Section 2.2 gives the initialisations: random, sampled vocabulary embeddings, or the embeddings of a text
(class labels in the paper).

``PromptModel`` wraps a ``TaskModel``: it embeds ``input_ids`` with ``model.get_input_embeddings()``, inserts the
prompt, extends ``attention_mask`` (and ``token_type_ids``) with ones (zeros) for the virtual tokens, and calls
``model(inputs_embeds=..., attention_mask=...)``; the model then gives positions ``0 .. n + T - 1``.

Where the prompt goes:
- decoders: prepended (position 0, as peft does); the decoder classifier pools the last real token, which the
  prepended prompt does not move;
- encoders: right after the first token ([CLS] / ``<s>``), so a [CLS]-pooled classifier still reads position 0
  and the special token keeps its learned role. The encoder is bidirectional, so every token still sees the
  prompt.

Per-token outputs (token classification, causal-LM logits, bare hidden states) come back with the virtual
positions removed, ``(B, T, ...)``, aligned with the caller's ``input_ids`` and labels.

Generation with a KV cache (decoders, ``minift.models.generate``): the prompt goes in with the first call, while
the cache is empty; later calls only account for it, the ``n`` virtual tokens being keys in the cache: the mask
gets their ones and the caller's positions move up by ``n``.
"""
from __future__ import annotations

import torch
from torch import nn

from minift.models.cache import KVCache
from minift.peft.config import PROMPT_INITS

PER_TOKEN_HEADS = (None, "token-classification", "causal-lm")


class SoftPrompt(nn.Module):
    """``embedding``: (n, C) trainable virtual-token embeddings.

    Args:
        num_virtual_tokens: n.
        word_embeddings: the model's input ``nn.Embedding`` (V, C); used for the width, device, dtype and the
            "vocab" / "text" initialisations (it is read, never stored).
        init: "random" | "vocab" | "text".
        token_ids: for "text", the token ids (repeated or cut to ``n``, as peft does).
    """

    def __init__(self, num_virtual_tokens: int, word_embeddings: nn.Embedding, init: str = "random",
                 token_ids: list[int] | None = None):
        super().__init__()
        weight = word_embeddings.weight
        V, C = weight.shape
        n = num_virtual_tokens
        self.embedding = nn.Parameter(torch.empty(n, C, device=weight.device, dtype=weight.dtype))
        with torch.no_grad():
            if init == "random":
                nn.init.uniform_(self.embedding, -0.5, 0.5)
            elif init == "vocab":
                ids = torch.randint(0, V, (n,), device=weight.device)
                self.embedding.copy_(weight[ids])
            elif init == "text":
                bad = [t for t in token_ids if not 0 <= t < V]
                if bad:
                    raise ValueError(f"prompt token_ids {bad} are outside the vocabulary (size {V})")
                repeated = (list(token_ids) * (n // len(token_ids) + 1))[:n]
                self.embedding.copy_(weight[torch.tensor(repeated, device=weight.device)])
            else:
                raise ValueError(f"unknown prompt init {init!r}; choose one of {PROMPT_INITS}")

    def forward(self, batch_size: int) -> torch.Tensor:
        """Returns the prompt broadcast to the batch: (B, n, C)."""
        return self.embedding.unsqueeze(0).expand(batch_size, -1, -1)

    def adapter_params(self) -> dict[str, nn.Parameter]:
        return {"embedding": self.embedding}


class PromptModel(nn.Module):
    """A ``TaskModel`` with a soft prompt in front of its input embeddings.

    Submodules: ``model`` (the wrapped ``TaskModel``, unchanged) and ``prompt`` (``SoftPrompt``). Reading an
    attribute the wrapper lacks (``config``, ``head``, ``head_kind``, ``is_decoder``, ``blocks``, ...) reads
    it from the wrapped model, so the wrapper can stand in for the model in the training engine.
    """

    def __init__(self, model: nn.Module, prompt: SoftPrompt):
        super().__init__()
        self.model = model
        self.prompt = prompt
        # Encoders keep their first token ([CLS] / <s>) in front; decoders get the prompt first.
        self.insert_at = 0 if model.is_decoder else 1

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            # during copy / unpickling _modules does not exist yet: do not recurse
            if name.startswith("__") or modules is None or "model" not in modules:
                raise
            return getattr(modules["model"], name)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.model.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.model.gradient_checkpointing = value

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.embedding.shape[0]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Same arguments and outputs as ``TaskModel.forward``; per-token outputs are ``(B, T, ...)``.

        Args:
            input_ids: (B, T), or ``inputs_embeds`` (B, T, C); exactly one. Encoders: position 0 must be the
                first special token ([CLS] / ``<s>``), as the tokenizers produce.
            attention_mask: (B, T) 1 keep / 0 pad, or None; with a cache (B, past + T), the prompt not counted.
            token_type_ids: (B, T), or None.
            position_ids, cache: decoders, for generation (see the module docstring); positions count from the
                first real token, the prompt not counted.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, C)
        B = inputs_embeds.shape[0]
        k, n = self.insert_at, self.num_virtual_tokens
        fed = n if cache is None or cache.length == 0 else 0  # virtual tokens fed now (not yet in the cache)
        p = self.prompt(B)[:, :fed].to(inputs_embeds.dtype)  # (B, fed, C)
        x = torch.cat([inputs_embeds[:, :k], p, inputs_embeds[:, k:]], dim=1)  # (B, fed + T, C)
        extra = {} if cache is None else {"cache": cache}
        if position_ids is not None:  # decoders: the prompt holds positions 0 .. n - 1, the caller's tokens follow
            lead = torch.arange(fed, device=position_ids.device).expand(*position_ids.shape[:-1], fed)
            extra["position_ids"] = torch.cat([lead, position_ids + n], dim=-1)  # (B, fed + T) or (fed + T,)
        if attention_mask is not None:
            ones = attention_mask.new_ones(B, n)
            attention_mask = torch.cat([attention_mask[:, :k], ones, attention_mask[:, k:]], dim=1)  # (B, n + T)
        if token_type_ids is not None:
            zeros = token_type_ids.new_zeros(B, n)
            extra["token_type_ids"] = torch.cat([token_type_ids[:, :k], zeros, token_type_ids[:, k:]], dim=1)
        try:
            out = self.model(inputs_embeds=x, attention_mask=attention_mask, **extra)
        except ValueError as err:  # e.g. too long for the position table: say that the prompt counts too
            raise ValueError(f"{err} (the soft prompt adds {n} virtual tokens to the {x.shape[1] - fed} input "
                             f"tokens: truncate inputs to the model's limit minus {n})") from err
        if self.model.head_kind in PER_TOKEN_HEADS:
            out = torch.cat([out[:, :k], out[:, k + fed:]], dim=1)  # (B, T, ...)
        return out
