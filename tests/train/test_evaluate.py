"""Evaluation against references: batched greedy generation equals transformers' generate, token by token and as
parsed labels (prompts of different lengths, right-padded, minift's model loaded from the transformers model's
folder); token-classification predictions keep the labelled positions only."""
import json

import pytest
import torch
from kit import collate
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from minift.data import (
    IGNORE_INDEX,
    Example,
    Task,
    compute_metrics,
    encode_causal_lm,
    load_tokenizer,
    parse_label,
    special_ids,
)
from minift.data.collate import collate as pad_features
from minift.models import load_pretrained
from minift.train.batching import eval_batches
from minift.train.evaluate import evaluate, generate_labels, generated_tokens, predict

CPU = torch.device("cpu")


def test_batched_greedy_generation_matches_transformers(tiny):
    checkpoint = tiny("llama", "causal-lm")
    model, reference = checkpoint.load().eval(), checkpoint.hf
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 100, (t,), generator=g) for t in (3, 8, 5)]
    batch = collate([{"input_ids": p, "labels": torch.tensor(0)} for p in prompts])  # right-padded
    eos = 7
    ours = generated_tokens(model, [batch], max_new_tokens=6, eos_id=eos, precision="fp32", device=CPU)
    for prompt, generated in zip(prompts, ours):
        out = reference.generate(prompt[None], max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
        expected = out[0, len(prompt):].tolist()
        if eos in expected:
            expected = expected[:expected.index(eos)]
        assert generated == expected


def test_token_predictions_use_labelled_positions_only(bert):
    model = bert("token-classification", num_labels=5)
    rows = [{"input_ids": torch.randint(1, 100, (t,)),
             "labels": torch.tensor([IGNORE_INDEX] + [1, IGNORE_INDEX, 3] * (t // 3))[:t]} for t in (7, 4)]
    batch = collate(rows)
    predictions, labels = predict(model, [batch], "token-classification", "fp32", CPU)
    logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for i, row in enumerate(batch["labels"]):
        keep = row != IGNORE_INDEX
        assert labels[i] == row[keep].tolist()
        assert predictions[i] == logits[i][keep].argmax(-1).tolist()


# --- causal-LM tasks: labels parsed from generated text (moved from tests/data/test_data_lm_eval.py) ------------

SENTENCES = ["the food was great", "slow service .", "battery life is amazing and the screen is bright",
             "rude", "hello world , hello tokens ! the quick brown fox"]
CORPUS = ["The food was great. but the service was slow and the waiter, rude!",
          "battery life The battery life of this laptop is amazing; it lasts all day.",
          "Héllo wörld accents and UPPER case"]


def as_minift(hf_model, folder):
    """The transformers model saved to ``folder`` and loaded by minift (the model evaluation really runs)."""
    hf_model.save_pretrained(folder)
    return load_pretrained(folder, head="causal-lm").eval()


@pytest.fixture
def tiny_gpt2(tmp_path):
    """A tiny byte-level BPE tokenizer folder (trained on a few sentences) and a random GPT-2 over its vocabulary."""
    import transformers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS * 10, trainer)
    bpe.model.save(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tokenizer = load_tokenizer(tmp_path)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=128, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=2)
    return tokenizer, transformers.GPT2LMHeadModel(config).eval(), tmp_path / "gpt2"


def _task(words):
    return Task(name="t", kind="causal-lm", splits={}, label_names=words, metric_names=["accuracy"],
                main_metric="accuracy", prompt="{text} :", label_words=words)


def _batches(task, examples, tokenizer, ids, batch_size):
    features = encode_causal_lm(task, examples, tokenizer, 256, ids, with_target=False)
    return eval_batches(features, lambda rows: pad_features(rows, ids.pad), batch_size)


def test_generated_labels_match_transformers_generate_prompt_by_prompt(tiny_gpt2):
    tokenizer, model, folder = tiny_gpt2
    with torch.no_grad():  # nudge the final LayerNorm toward " the": some prompts answer "the", others do not
        model.transformer.ln_f.bias.add_(model.transformer.wte.weight[tokenizer.token_to_id("\u0120the")] * 24)
    ids = special_ids(tokenizer)
    task = _task(["food", "the"])
    examples = [Example(text=s, label=i) for i, s in enumerate(SENTENCES)]  # labels: the example's index
    batches = _batches(task, examples, tokenizer, ids, batch_size=2)
    predicted, order = generate_labels(as_minift(model, folder), batches, tokenizer, task.label_words, ids.eos,
                                       "fp32", CPU)
    by_example = dict(zip(order, predicted))  # eval batches are sorted by length: map back by the label

    longest = max(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in task.label_words)
    for i, feature in enumerate(encode_causal_lm(task, examples, tokenizer, 256, ids, with_target=False)):
        prompt = torch.tensor([feature["input_ids"]])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=longest + 1,
                             do_sample=False, pad_token_id=ids.pad, eos_token_id=ids.eos)[0, prompt.shape[1]:].tolist()
        if ids.eos in out:
            out = out[: out.index(ids.eos)]
        assert by_example[i] == parse_label(tokenizer.decode(out, skip_special_tokens=True), task.label_words)
    assert 0 < predicted.count(1) < len(SENTENCES)  # the prompts really differ: padding had to be right


def test_evaluate_scores_the_label_word_a_model_generates(tiny_gpt2):
    tokenizer, model, folder = tiny_gpt2
    target = tokenizer.token_to_id("\u0120the")  # " the" as one byte-level token
    assert target is not None
    with torch.no_grad():  # final LayerNorm outputs a constant pointing at " the": the model always says it
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[target] * 50)
    ids = special_ids(tokenizer)
    task = _task(["food", "the"])
    examples = [Example(text=s, label=i % 2) for i, s in enumerate(SENTENCES)]
    batches = _batches(task, examples, tokenizer, ids, batch_size=3)
    ours = as_minift(model, folder)
    predicted, _ = generate_labels(ours, batches, tokenizer, task.label_words, ids.eos, "fp32", CPU)
    assert predicted == [1] * len(SENTENCES)
    metrics = evaluate(ours, task, batches, tokenizer, ids.eos, "fp32", CPU)
    assert metrics == compute_metrics(task, predicted, [e.label for e in examples])
    assert metrics["accuracy"] == pytest.approx(2 / 5)
