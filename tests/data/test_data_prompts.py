"""Causal-LM tasks from any file and the built-in *_lm tasks: prompts and label words overridden and checked (a
missing {text}, unknown fields, empty or duplicate label words, words a tokenizer cannot tell apart), rows without
the columns named by file and line, and the command line's escapes."""
import json

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from minift.data import DataError, Example, load_task, load_tokenizer
from minift.data.encode import encode_causal_lm, format_prompt
from minift.data.prompts import check_prompt, label_word_ids, parse_label, split_label_words, unescape
from minift.data.tokenizer import special_ids

PROMPT = "Sentence 1: {text}\nSentence 2: {text_pair}\nParaphrase?"


def _pairs(tmp_path, rows=None, name="pairs.jsonl"):
    rows = rows or [{"s1": f"first {i}", "s2": f"second {i}", "y": i % 2} for i in range(20)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file:{path}"


def _load(spec, **kwargs):
    options = {"text_column": "s1", "text_pair_column": "s2", "label_column": "y", "kind": "causal-lm"}
    return load_task(spec, **{**options, **kwargs})


def test_file_task_with_prompt_and_label_words(tmp_path):
    task = _load(_pairs(tmp_path), prompt=PROMPT, label_words=["no", "yes"])
    assert task.kind == "causal-lm" and task.label_names == ["0", "1"] and task.label_words == ["no", "yes"]
    example = task.splits["train"][0]
    assert format_prompt(task, example) == f"Sentence 1: {example.text}\nSentence 2: {example.text_pair}\nParaphrase?"
    assert set(task.splits) == {"train", "test"}  # one file: split 9:1


def test_file_task_defaults_to_its_labels_and_a_plain_prompt(tmp_path):
    task = _load(_pairs(tmp_path))
    assert task.label_words == ["0", "1"] and "{text_pair}" in task.prompt
    single = load_task(_pairs(tmp_path), text_column="s1", label_column="y", kind="causal-lm")
    assert "{text_pair}" not in single.prompt and "{text}" in single.prompt


@pytest.mark.parametrize(("prompt", "message"), [
    ("Is it a paraphrase? {text_pair}", r"lacks \{text\}"),
    ("Sentence 1: {text}\nParaphrase?", r"lacks \{text_pair\}"),
    ("{text} {text_pair} {label}", r"names \{label\}"),
    ("{text} {text_pair} {0}", r"names \{0\}"),
    ("{text.upper} {text_pair}", r"names \{text\.upper\}"),
    ("{text} {text_pair} {", "not a valid template"),
])
def test_bad_prompts_are_clear_errors(tmp_path, prompt, message):
    with pytest.raises(DataError, match=message):
        _load(_pairs(tmp_path), prompt=prompt)


def test_a_pair_field_without_a_pair_column(tmp_path):
    with pytest.raises(DataError, match="no second text.*--text-pair-column"):
        load_task(_pairs(tmp_path), text_column="s1", label_column="y", kind="causal-lm", prompt=PROMPT)


def test_literal_braces_are_allowed(tmp_path):
    task = _load(_pairs(tmp_path), prompt="{{json}} {text} / {text_pair}")
    assert format_prompt(task, Example(text="a", text_pair="b", label=0)) == "{json} a / b"


@pytest.mark.parametrize(("words", "message"), [
    (["no"], "1 word.*for 2 classes.*order \\['0', '1'\\]"),
    (["no", "yes", "maybe"], "3 word"),
    (["no", ""], "word 2 is empty"),
    (["no", "", "yes"], "word 2 is empty"),
    (["Yes", "yes"], "same word 'yes'"),
])
def test_bad_label_words_are_clear_errors(tmp_path, words, message):
    with pytest.raises(DataError, match=message):
        _load(_pairs(tmp_path), label_words=words)


def test_rows_without_the_columns_name_file_and_line(tmp_path):
    rows = [{"s1": "a", "s2": "b", "y": 0}, {"s1": "c", "y": 1}]
    spec = _pairs(tmp_path, rows)
    with pytest.raises(DataError, match=r"pairs\.jsonl, line 2: missing column 's2'"):
        _load(spec)
    csv = tmp_path / "pairs.csv"
    csv.write_text("sentence,y\nhello,0\n")
    with pytest.raises(DataError, match=r"pairs\.csv, line 1: header \['sentence', 'y'\] lacks the column"):
        load_task(f"file:{csv}", text_column="s1", label_column="y", kind="causal-lm")


def test_prompt_and_label_words_only_for_causal_lm_tasks(tmp_path):
    with pytest.raises(DataError, match="--label-words: options of causal-LM tasks"):
        load_task(_pairs(tmp_path), text_column="s1", label_column="y", label_words=["no", "yes"])
    with pytest.raises(DataError, match="kind must be one of classification, regression, causal-lm, sft"):
        load_task(_pairs(tmp_path), text_column="s1", label_column="y", kind="generation")


def test_command_line_escapes():
    assert unescape(r"Sentence: {text}\nSentiment:") == "Sentence: {text}\nSentiment:"
    assert unescape(r"a\tb\\nc\d") == "a\tb\\nc\\d"  # \\ is one backslash; an unknown escape stays as written
    assert split_label_words("no, yes") == ["no", "yes"]
    assert split_label_words("no,,yes") == ["no", "", "yes"]  # kept, so that the check can name it


def _word_tokenizer(words):
    """A word-level tokenizer of ``words`` (lowercasing), everything else <unk>."""
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def test_label_words_must_stay_distinct_after_tokenization():
    tokenizer = _word_tokenizer(["no", "yes", "positive"])
    assert label_word_ids(tokenizer, ["no", "yes"]) == [[2], [3]]
    with pytest.raises(DataError, match="'maybe' and 'perhaps' are the same tokens"):
        label_word_ids(tokenizer, ["maybe", "perhaps", "yes"])  # both <unk>
    with pytest.raises(DataError, match="no tokens"):
        label_word_ids(tokenizer, ["yes", "   "])


def _gpt2_tokenizer(folder):
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    return load_tokenizer(folder)


def test_a_word_generation_could_never_name_is_refused(bpe_folder):
    tokenizer = _gpt2_tokenizer(bpe_folder)
    with pytest.raises(DataError, match="'\\+1'.*read back as no label word"):  # \b cannot match before "+"
        label_word_ids(tokenizer, ["+1", "-1"])
    with pytest.raises(DataError, match="read back as 'good'"):
        label_word_ids(tokenizer, ["good", "good!"])  # "good!" always parses as "good"
    # a word whose first token is another word's whole word is fine: generation goes on until EOS
    assert parse_label(tokenizer.decode(label_word_ids(tokenizer, ["bat", "battery"])[1]), ["bat", "battery"]) == 1


def test_encoded_targets_use_the_checked_word_ids(bpe_folder, tmp_path):
    tokenizer = _gpt2_tokenizer(bpe_folder)
    task = _load(_pairs(tmp_path), prompt=PROMPT, label_words=["no", "yes"])
    special = special_ids(tokenizer)
    features = encode_causal_lm(task, task.splits["train"][:4], tokenizer, 64, special)
    for ex, feature in zip(task.splits["train"], features):
        target = label_word_ids(tokenizer, task.label_words)[ex.label] + [special.eos]
        assert feature["input_ids"][-len(target):] == target
        assert [t for t in feature["labels"] if t != -100] == target


@pytest.mark.parametrize(("name", "words", "pair"), [("mrpc_lm", ["no", "yes"], True),
                                                     ("sst2_lm", ["negative", "positive"], False)])
def test_builtin_lm_tasks(shared_data, name, words, pair):
    task = load_task(name, shared_data)
    base = load_task(name[:-3], shared_data)
    assert task.kind == "causal-lm" and task.label_words == words and task.label_names == base.label_names
    assert {k: len(v) for k, v in task.splits.items()} == {k: len(v) for k, v in base.splits.items()}
    assert ("{text_pair}" in task.prompt) == pair
    custom = load_task(name, shared_data, prompt="Q: {text}" + (" / {text_pair}" if pair else "") + "\nA:",
                       label_words=["bad", "good"])
    assert custom.label_words == ["bad", "good"] and custom.prompt.startswith("Q: {text}")
    with pytest.raises(DataError, match=r"lacks \{text\}"):
        load_task(name, shared_data, prompt="nothing to see")
    with pytest.raises(DataError, match="its causal-LM form is " + name):
        load_task(name[:-3], shared_data, prompt="Q: {text}")


def test_check_prompt_names_where():
    with pytest.raises(DataError, match="--prompt of task 'x'"):
        check_prompt("no text", False, "--prompt of task 'x'")
