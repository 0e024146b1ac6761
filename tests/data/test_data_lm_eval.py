"""Generation-based evaluation of causal-LM tasks: batched, right-padded greedy decoding equals transformers'
unpadded greedy ``generate`` prompt by prompt, on a tiny random GPT-2 (absolute positions, the hard case)."""
import json

import pytest
import torch

from minift.data import Example, Task, encode_causal_lm, load_tokenizer, parse_label, special_ids
from minift.data.lm_eval import generate_label_ids, greedy_generate

SENTENCES = ["the food was great", "slow service .", "battery life is amazing and the screen is bright",
             "rude", "hello world , hello tokens ! the quick brown fox"]


@pytest.fixture
def tiny_gpt2(bpe_folder):
    transformers = pytest.importorskip("transformers")
    (bpe_folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tokenizer = load_tokenizer(bpe_folder)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=128, n_embd=32, n_layer=2,
                                     n_head=2, eos_token_id=2, bos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()

    def logits(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    return tokenizer, model, logits


def _reference(model, prompt, max_new_tokens, eos_id):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=1, eos_token_id=eos_id)
    return out[0, len(prompt):].tolist()


def test_batched_greedy_generation_equals_unpadded_transformers_generate(tiny_gpt2):
    tokenizer, model, logits = tiny_gpt2
    prompts = [tokenizer.encode(s).ids for s in SENTENCES]
    assert len({len(p) for p in prompts}) > 2  # really padded
    ours = greedy_generate(logits, prompts, pad_id=1, eos_id=None, max_new_tokens=5, batch_size=3)
    assert ours == [_reference(model, p, 5, None) for p in prompts]
    # stopping at eos: call the second token generated for the first prompt "eos"; that row stops after
    # two tokens while the others run on (or stop wherever they produce it too)
    eos = ours[0][1]
    stopped = greedy_generate(logits, prompts, pad_id=1, eos_id=eos, max_new_tokens=5, batch_size=4)
    for full, short in zip(ours, stopped):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert short == full[:cut]
    assert len(stopped[0]) < 5 and any(len(short) == 5 for short in stopped)  # rows stop independently


def test_generate_label_ids_parses_the_generated_text(tiny_gpt2):
    tokenizer, model, logits = tiny_gpt2
    ids = special_ids(tokenizer)
    words = ["food", "service", "hello"]
    task = Task(name="t", kind="causal-lm", splits={}, label_names=words, metric_names=["accuracy"],
                main_metric="accuracy", prompt="{text} :", label_words=words)
    examples = [Example(text=s, label=0) for s in SENTENCES]
    predicted = generate_label_ids(logits, task, examples, tokenizer, ids, batch_size=2)
    longest = max(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in words)
    prompts = [f["input_ids"] for f in encode_causal_lm(task, examples, tokenizer, 256, ids, with_target=False)]
    expected = [parse_label(tokenizer.decode(_reference(model, p, longest + 1, ids.eos), skip_special_tokens=True),
                            words) for p in prompts]
    assert predicted == expected and all(-1 <= p < 3 for p in predicted)
