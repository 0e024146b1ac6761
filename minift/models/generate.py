"""Text generation for causal-LM ``TaskModel``s: greedy or sampled, with a KV cache or without one.

``generate(model, input_ids, attention_mask, max_new_tokens=...)`` appends up to ``max_new_tokens`` tokens to
each row and stops a row at an EOS id or a stop string. Prompts may be left-, right- or mixed-padded (the mask
says which positions are real); the result is ``input_ids`` unchanged followed by the new tokens.

Two ways to run the model, chosen by ``use_cache``:

- with the cache (default): each row's real tokens are moved to the right end (left padding), the prompt runs
  once and fills a ``KVCache`` (``minift.models.cache``), then each step runs only the new token. Positions are
  counted over real tokens (``cumsum(mask) - 1``, as transformers derives them from the mask while generating),
  so learned absolute positions (GPT-2, GPT-Neo) and RoPE see the same positions as an unpadded prompt.
- without: every step re-runs ``model(input_ids, attention_mask)`` over the sequence so far (T² work). Each
  row's real tokens are moved to the left end, at positions 0..len-1 whatever the padding, and each new token is
  written right after its row's last token; the padding that follows is masked and, attention being causal,
  never seen by real tokens. Works for any model that maps ``(input_ids, attention_mask)`` to ``(B, T, V)``.

Sampling applies transformers' logits warpers in transformers' order (temperature, then top-k, then top-p),
then draws from the softmax with ``torch.multinomial`` and the given generator (or seed), so runs repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from minift.models.cache import KVCache


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    decode: Callable[[list[int]], str] | object | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to each row of ``input_ids``.

    Args:
        model: a decoder ``TaskModel`` (or a wrapper of one, e.g. ``PromptModel``) returning ``(B, T, V)`` logits.
        input_ids: (B, T) prompt ids.
        attention_mask: (B, T) 1 (real) / 0 (pad), or None (no padding).
        max_new_tokens: how many tokens to add at most (>= 0).
        do_sample: draw each token from the (warped) distribution; False takes the argmax (greedy).
        temperature, top_k, top_p: sampling only, as transformers' warpers (top_k None / 0 and top_p None / 1.0
            are off).
        seed / generator: sampling only: a seed for a fresh generator, or a ``torch.Generator`` on the
            device of ``input_ids`` (at most one; neither uses torch's global generator).
        eos_token_id: id(s) that end a row (the EOS is kept in the output).
        pad_token_id: what fills a row after it ended; default the first EOS id, else 0.
        stop_strings: string(s) that end a row once they occur in its decoded new text (the token that
            completes one is kept).
        decode: for ``stop_strings``: a tokenizer (anything with ``.decode(ids)``) or a function ids → text.
        use_cache: run with a KV cache (see the module docstring); False re-runs the sequence at each step.

    Returns:
        (B, T + n): ``input_ids`` unchanged, then the n <= max_new_tokens new tokens of each row
        (``out[:, T:]``); generation stops early once every row has ended.
    """
    keep = _check(input_ids, attention_mask, max_new_tokens)
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    fill = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    if stops and decode is None:
        raise ValueError("stop_strings need decode= (a tokenizer or a function from token ids to text)")
    to_text = decode.decode if hasattr(decode, "decode") else decode
    choose = _sampler(temperature, top_k, top_p, _generator(seed, generator, input_ids.device)) if do_sample \
        else _greedy
    if max_new_tokens == 0:
        return input_ids.clone()
    was_training = model.training
    model.eval()
    try:
        steps = (CachedSteps if use_cache else FullSteps)(model, input_ids, keep, max_new_tokens)
        new = _decode_loop(steps, choose, max_new_tokens, fill, eos, stops, to_text)
    finally:
        model.train(was_training)
    return torch.cat([input_ids, new], dim=1)


def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | list[int] | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy ``generate`` with the KV cache (the older signature, kept for its callers)."""
    return generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)


def _check(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int) -> torch.Tensor:
    """The boolean (B, T) mask of real tokens, after checking shapes."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    keep = attention_mask.bool()
    if bool((~keep.any(dim=1)).any()):
        raise ValueError("a row of attention_mask is all 0: every prompt needs at least one real token")
    return keep


def _decode_loop(steps, choose, max_new_tokens: int, fill: int, eos: list[int], stops: list[str],
                 to_text) -> torch.Tensor:
    """Pick a token per row per step until ``max_new_tokens`` or every row has ended. Returns (B, n)."""
    logits = steps.first()  # (B, V)
    B, device = logits.shape[0], logits.device
    eos_ids = torch.tensor(eos, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new = []
    for step in range(max_new_tokens):
        next_ids = choose(logits).masked_fill(finished, fill)  # (B,)
        new.append(next_ids)
        if eos:
            finished = finished | torch.isin(next_ids, eos_ids)
        if stops:
            finished = finished | _hit_stop_string(torch.stack(new, dim=1), finished, stops, to_text)
        if step + 1 == max_new_tokens or ((eos or stops) and bool(finished.all())):
            break
        logits = steps.next(next_ids)
    return torch.stack(new, dim=1)


def _hit_stop_string(new: torch.Tensor, finished: torch.Tensor, stops: list[str], to_text) -> torch.Tensor:
    """(B,) bool: the rows not yet finished whose decoded new tokens ``new`` (B, n) contain a stop string."""
    hit = [False] * new.shape[0]
    for row, (tokens, done) in enumerate(zip(new.tolist(), finished.tolist())):
        if not done:
            text = to_text(tokens)
            hit[row] = any(s in text for s in stops)
    return torch.tensor(hit, device=new.device)


class FullSteps:
    """No cache: re-run the sequence so far at every step, real tokens packed to the left."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, keep: torch.Tensor, max_new_tokens: int):
        B, T = input_ids.shape
        self.model = model
        self.lengths = keep.sum(dim=1)  # (B,)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        self.ids = torch.zeros(B, T + max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
        self.ids[:, :T] = input_ids.gather(1, order).masked_fill(~keep.gather(1, order), 0)  # (B, T+n), packed left
        self.rows = torch.arange(B, device=input_ids.device)
        self.step = 0

    def first(self) -> torch.Tensor:
        return self._logits()

    def next(self, next_ids: torch.Tensor) -> torch.Tensor:
        self.ids[self.rows, self.lengths + self.step] = next_ids
        self.step += 1
        return self._logits()

    def _logits(self) -> torch.Tensor:
        """(B, V): the logits after each row's last token."""
        end = int(self.lengths.max()) + self.step  # longest row so far
        positions = torch.arange(end, device=self.ids.device)  # (end,)
        mask = (positions[None, :] < (self.lengths + self.step)[:, None]).long()  # (B, end)
        logits = _lm_logits(self.model(input_ids=self.ids[:, :end], attention_mask=mask))  # (B, end, V)
        return logits[self.rows, self.lengths + self.step - 1]


class CachedSteps:
    """With a ``KVCache``: real tokens packed to the right (left padding), the prompt run once, then one token
    per step at position ``cumsum(mask) - 1``."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, keep: torch.Tensor, max_new_tokens: int):
        B, T = input_ids.shape
        self.model = model
        order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)  # padding first, then real tokens in order
        keep = keep.gather(1, order)
        self.ids = input_ids.gather(1, order).masked_fill(~keep, 0)  # (B, T), left-padded
        self.padded = not bool(keep.all())
        # the mask of prompt + new tokens, filled as they come (new tokens are all real)
        self.mask = torch.ones(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
        self.mask[:, :T] = keep
        self.positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T); padding at 0, masked anyway
        self.fed = 0  # tokens given to the model so far (the cache may hold more, e.g. a soft prompt's)
        self.cache = KVCache(len(model.blocks), max_new_tokens)

    def first(self) -> torch.Tensor:
        return self._logits(self.ids, self.positions)

    def next(self, next_ids: torch.Tensor) -> torch.Tensor:
        self.positions = self.positions[:, -1:] + 1  # (B, 1)
        return self._logits(next_ids[:, None], self.positions)

    def _logits(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` (B, t) after the cached tokens; (B, V): the logits after the last one."""
        self.fed += ids.shape[1]
        mask = self.mask[:, :self.fed] if self.padded else None  # (B, past + t)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache)
        return _lm_logits(logits)[:, -1]


def _lm_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 3:
        raise ValueError(f"generation needs (B, T, V) LM logits, the model returned {tuple(logits.shape)}; "
                         "load it with head='causal-lm'")
    return logits


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


def _generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if seed is not None:
        return torch.Generator(device=device).manual_seed(seed)
    return generator


def _sampler(temperature: float, top_k: int | None, top_p: float | None,
             generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, V) logits → (B,) sampled ids, after checking the warper settings once."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None: off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")

    def sample(logits: torch.Tensor) -> torch.Tensor:
        probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

    return sample


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> torch.Tensor:
    """transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``, in that order.

    Args:
        logits: (B, V) next-token scores (warped in fp32, as transformers does).
        temperature: scores are divided by it.
        top_k: keep the k highest scores (ties with the k-th kept); None or 0: off.
        top_p: nucleus sampling (Holtzman et al., https://arxiv.org/abs/1904.09751): keep the smallest set of
            highest-probability tokens whose probabilities add up to more than ``top_p`` (at least one token);
            None or 1.0: off.

    Returns:
        (B, V) fp32 scores, ``-inf`` where a token is removed.
    """
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)  # (B, V) ascending
        remove = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1:] = False  # keep the most likely token
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores
