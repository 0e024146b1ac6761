"""Generation-based evaluation of causal-LM tasks: the labels parsed from batched generation equal those parsed
from transformers' unpadded greedy ``generate``, prompt by prompt, on a tiny random GPT-2."""
import json

import pytest
import torch

from minift.data import Example, Task, compute_metrics, encode_causal_lm, load_tokenizer, parse_label, special_ids
from minift.data.lm_eval import generate_label_ids

SENTENCES = ["the food was great", "slow service .", "battery life is amazing and the screen is bright",
             "rude", "hello world , hello tokens ! the quick brown fox"]


class _Logits(torch.nn.Module):
    """transformers' GPT-2 behind minift's model contract: ``model(input_ids, attention_mask) -> (B, T, V)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.fixture
def tiny_gpt2(bpe_folder):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("minift.models.generate")
    (bpe_folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tokenizer = load_tokenizer(bpe_folder)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=128, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=2)
    return tokenizer, transformers.GPT2LMHeadModel(config).eval()


def _task(words):
    return Task(name="t", kind="causal-lm", splits={}, label_names=words, metric_names=["accuracy"],
                main_metric="accuracy", prompt="{text} :", label_words=words)


def test_generate_label_ids_matches_transformers_generate_prompt_by_prompt(tiny_gpt2):
    tokenizer, model = tiny_gpt2
    with torch.no_grad():  # nudge the final LayerNorm toward " the": some prompts answer "the", others do not
        model.transformer.ln_f.bias.add_(model.transformer.wte.weight[tokenizer.token_to_id("\u0120the")] * 24)
    ids = special_ids(tokenizer)
    task = _task(["food", "the"])
    examples = [Example(text=s, label=0) for s in SENTENCES]
    predicted = generate_label_ids(_Logits(model).eval(), task, examples, tokenizer, ids, batch_size=2)

    longest = max(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in task.label_words)
    expected = []
    for feature in encode_causal_lm(task, examples, tokenizer, 256, ids, with_target=False):
        prompt = torch.tensor([feature["input_ids"]])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=longest + 1,
                             do_sample=False, pad_token_id=ids.pad, eos_token_id=ids.eos)[0, prompt.shape[1]:].tolist()
        if ids.eos in out:
            out = out[: out.index(ids.eos)]
        expected.append(parse_label(tokenizer.decode(out, skip_special_tokens=True), task.label_words))
    assert predicted == expected
    assert 0 < predicted.count(1) < len(SENTENCES)  # the prompts really differ: padding had to be right


def test_generate_label_ids_reads_the_label_word_a_model_generates(tiny_gpt2):
    tokenizer, model = tiny_gpt2
    target = tokenizer.token_to_id("\u0120the")  # " the" as one byte-level token
    assert target is not None
    with torch.no_grad():  # final LayerNorm outputs a constant pointing at " the": the model always says it
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[target] * 50)
    task = _task(["food", "the"])
    examples = [Example(text=s, label=i % 2) for i, s in enumerate(SENTENCES)]
    predicted = generate_label_ids(_Logits(model).eval(), task, examples, tokenizer, batch_size=3)
    assert predicted == [1] * len(SENTENCES)
    assert compute_metrics(task, predicted, [e.label for e in examples])["accuracy"] == pytest.approx(2 / 5)
