"""Encoding and padding: pairs and truncation as transformers encodes them, NER labels on the first sub-token of
each word (transformers' word_ids), causal-LM labels, padding (length grouping: tests/train/test_batching.py)."""
import pytest
import torch

from minift.data import (
    IGNORE_INDEX,
    Collator,
    Example,
    Task,
    collate,
    encode,
    encode_causal_lm,
    load_tokenizer,
    parse_label,
    special_ids,
)


def _task(kind, labels=("neg", "pos"), **extra):
    metrics = {"regression": ["pearson"], "token-classification": ["f1"]}.get(kind, ["accuracy"])
    return Task(name="t", kind=kind, splits={}, label_names=list(labels), metric_names=metrics,
                main_metric=metrics[0], **extra)


PAIRS = [Example(text="battery life", text_pair="The battery life is amazing, it lasts all day long.", label=1),
         Example(text="screen", text_pair="Dim screen.", label=0),
         Example(text="a rather long aspect term that goes on", text_pair="and a sentence as well", label=1)]


def test_pairs_padding_and_truncation_match_transformers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    tokenizer = load_tokenizer(minilm_dir)
    for max_length in (None, 12):
        features = encode(_task("classification"), PAIRS, tokenizer, max_length=max_length)
        batch = collate(features, special_ids(tokenizer).pad)
        expected = reference([e.text for e in PAIRS], [e.text_pair for e in PAIRS], padding=True,
                             truncation=max_length is not None, max_length=max_length, return_tensors="pt")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            torch.testing.assert_close(batch[key], expected[key])
        assert batch["labels"].tolist() == [1, 0, 1] and batch["labels"].dtype == torch.long
    assert tokenizer.truncation is None  # encode leaves the tokenizer as it found it


def test_regression_labels_are_float(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    examples = [Example(text="a", text_pair="b", label=4.5), Example(text="c", text_pair="d e f", label=0.25)]
    batch = collate(encode(_task("regression", labels=()), examples, tokenizer), 0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [4.5, 0.25]


def test_ner_labels_on_first_subtoken_as_transformers_word_ids(minilm_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    tokenizer = load_tokenizer(minilm_dir)
    examples = [Example(text="", words=("IL-2", "gene", "expression", "in", "lymphocytes", "."),
                        label=(1, 2, 0, 0, 7, 0)),
                Example(text="", words=("NF-kappaB", "binds"), label=(9, 0))]
    features = encode(_task("token-classification", labels=[str(i) for i in range(11)]), examples, tokenizer, 128)
    for example, feature in zip(examples, features):
        expected = reference(list(example.words), is_split_into_words=True)
        assert feature["input_ids"] == expected["input_ids"]
        word_ids, previous, labels = expected.word_ids(), None, []
        for word in word_ids:
            labels.append(example.label[word] if word is not None and word != previous else IGNORE_INDEX)
            previous = word
        assert feature["labels"] == labels
    batch = collate(features, 0)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, len(features[1]["input_ids"]):] == IGNORE_INDEX).all()
    assert sum(v != IGNORE_INDEX for v in features[0]["labels"]) == 6  # one label per word


def test_ner_truncation_keeps_labels_aligned(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    example = Example(text="", words=tuple(f"w{i}" for i in range(40)), label=tuple(i % 3 for i in range(40)))
    feature = encode(_task("token-classification", labels=["O", "B-x", "I-x"]), [example], tokenizer, 16)[0]
    assert len(feature["input_ids"]) == 16
    kept = [v for v in feature["labels"] if v != IGNORE_INDEX]
    assert kept == list(example.label[: len(kept)])


def test_causal_lm_loss_only_on_label_word_and_eos(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    ids = special_ids(tokenizer)
    task = _task("causal-lm", labels=["negative", "positive"], prompt="Sentence: {text}\nSentiment:",
                 label_words=["negative", "positive"])
    examples = [Example(text="Profits rose sharply .", label=1), Example(text="Sales fell .", label=0)]
    features = encode(task, examples, tokenizer, max_length=64, special=ids)
    for example, feature in zip(examples, features):
        prompt = tokenizer.encode(task.prompt.format(text=example.text)).ids
        target = tokenizer.encode(" " + task.label_words[example.label], add_special_tokens=False).ids + [ids.eos]
        assert feature["input_ids"] == prompt + target
        assert feature["labels"] == [IGNORE_INDEX] * len(prompt) + target
    batch = collate(features, ids.pad)
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) == torch.tensor([len(f["labels"]) - f["labels"].count(
        IGNORE_INDEX) for f in features])).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    short = encode_causal_lm(task, examples, tokenizer, max_length=6, special=ids)[0]
    assert len(short["input_ids"]) == 6 and short["input_ids"][-2:] == features[0]["input_ids"][-2:]
    prompts = encode_causal_lm(task, examples, tokenizer, 64, ids, with_target=False)
    left = Collator(ids.pad, padding_side="left")(prompts)
    assert left["attention_mask"][:, -1].all() and left["labels"].tolist() == [1, 0]


def test_parse_label():
    words = ["negative", "neutral", "positive"]
    assert parse_label(" positive<|endoftext|>", words) == 2
    assert parse_label("Neutral, not negative", words) == 1
    assert parse_label("nonpositive", words) == -1
    assert parse_label("", words) == -1


def test_collate_pads_right_and_to_multiple():
    features = [{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8], "labels": 0}]
    batch = collate(features, pad_id=3, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 3], [8, 3, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)


def test_ner_with_byte_level_bpe_matches_transformers_add_prefix_space(bpe_folder):
    transformers = pytest.importorskip("transformers")
    (bpe_folder / "config.json").write_text('{"model_type": "roberta"}')
    reference = transformers.RobertaTokenizerFast.from_pretrained(str(bpe_folder), add_prefix_space=True)
    tokenizer = load_tokenizer(bpe_folder)
    example = Example(text="", words=("The", "battery", "life", "lasts", "all", "day", "."),
                      label=(0, 1, 2, 0, 0, 0, 0))
    feature = encode(_task("token-classification", labels=["O", "B-x", "I-x"]), [example], tokenizer, 64)[0]
    expected = reference(list(example.words), is_split_into_words=True)
    assert feature["input_ids"] == expected["input_ids"]
    assert "token_type_ids" not in feature
    firsts = [i for i, w in enumerate(expected.word_ids()) if w is not None and w != expected.word_ids()[i - 1]]
    assert [feature["labels"][i] for i in firsts] == list(example.label)


@pytest.mark.parametrize("name,split,max_length", [("restaurant", "test", 48), ("mrpc", "test", 40),
                                                   ("bionlp2004", "test", 64)])
def test_real_task_batches_match_transformers(minilm_dir, shared_data, name, split, max_length):
    """300 real examples, truncated and padded, exactly as transformers' tokenizer gives them."""
    from minift.data import load_task

    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    tokenizer = load_tokenizer(minilm_dir)
    task = load_task(name, shared_data)
    examples = list(task.splits[split][:300])
    batch = collate(encode(task, examples, tokenizer, max_length), special_ids(tokenizer).pad)
    if task.kind == "token-classification":
        expected = reference([list(e.words) for e in examples], is_split_into_words=True, truncation=True,
                             max_length=max_length, padding=True, return_tensors="pt")
        labels = torch.full_like(expected["input_ids"], IGNORE_INDEX)
        for row, example in enumerate(examples):
            previous = None
            for column, word in enumerate(expected.word_ids(row)):
                if word is not None and word != previous:
                    labels[row, column] = example.label[word]
                previous = word
        torch.testing.assert_close(batch["labels"], labels)
    else:
        expected = reference([e.text for e in examples], [e.text_pair for e in examples], truncation=True,
                             max_length=max_length, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        torch.testing.assert_close(batch[key], expected[key])
