"""load_tokenizer against transformers' tokenizers: BERT (MiniLM's folder, and vocab.txt alone), and byte-level
BPE folders (RoBERTa / GPT-2 post-processing) built in tmp_path."""
import json
import shutil

import pytest

from minift.data import DataError, load_tokenizer, special_ids, uses_token_type_ids

PAIRS = [
    ("The food was great.", "but the service was slow and the waiter, rude!"),
    ("battery life", "The battery life of this laptop is amazing; it lasts all day."),
    ("Héllo wörld", "accents and UPPER case"),
]


def _hf(folder, cls_name):
    transformers = pytest.importorskip("transformers")
    return getattr(transformers, cls_name).from_pretrained(str(folder))


def _assert_same(ours, theirs, first, second=None, max_length=None, with_types=True):
    if max_length is not None:
        ours.enable_truncation(max_length, strategy="longest_first")
    enc = ours.encode(first, second) if second is not None else ours.encode(first)
    ref = theirs(first, second, truncation=max_length is not None, max_length=max_length,
                 return_token_type_ids=with_types)
    assert enc.ids == ref["input_ids"]
    if with_types:
        assert enc.type_ids == ref["token_type_ids"]
    ours.no_truncation()


def test_minilm_tokenizer_json_matches_transformers_for_pairs(minilm_dir):
    ours = load_tokenizer(minilm_dir)
    assert ours.padding is None and ours.truncation is None  # switched off although the file has them
    theirs = _hf(minilm_dir, "AutoTokenizer")
    for first, second in PAIRS:
        _assert_same(ours, theirs, first, second)
        _assert_same(ours, theirs, first)
        _assert_same(ours, theirs, first, second, max_length=12)
    assert uses_token_type_ids(ours)
    ids = special_ids(ours)
    assert (ids.pad, ids.cls, ids.sep) == (theirs.pad_token_id, theirs.cls_token_id, theirs.sep_token_id)


def test_vocab_txt_folder_builds_bert_wordpiece(minilm_dir, tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    ours = load_tokenizer(tmp_path)
    theirs = _hf(minilm_dir, "AutoTokenizer")
    for first, second in PAIRS:
        _assert_same(ours, theirs, first, second)
        _assert_same(ours, theirs, first, second, max_length=10)


def test_roberta_bpe_folder_matches_transformers(bpe_folder):
    (bpe_folder / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    ours = load_tokenizer(bpe_folder)
    theirs = _hf(bpe_folder, "RobertaTokenizerFast")
    for first, second in PAIRS:
        _assert_same(ours, theirs, first, second, with_types=False)  # <s> A </s></s> B </s>
        _assert_same(ours, theirs, first, with_types=False)
        _assert_same(ours, theirs, first, second, max_length=16, with_types=False)
    enc = ours.encode("fox", "dog")
    sep = ours.token_to_id("</s>")
    assert enc.ids[0] == ours.token_to_id("<s>") and enc.ids.count(sep) == 3
    assert not uses_token_type_ids(ours)  # RoBERTa has one token type: never feed type 1
    assert special_ids(ours).pad == theirs.pad_token_id


def test_gpt2_bpe_folder_matches_transformers(bpe_folder):
    (bpe_folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    ours = load_tokenizer(bpe_folder)
    theirs = _hf(bpe_folder, "GPT2TokenizerFast")
    for first, second in PAIRS:
        _assert_same(ours, theirs, first, second, with_types=False)
        _assert_same(ours, theirs, first, with_types=False)
    assert not uses_token_type_ids(ours)


def test_bpe_folder_without_model_type_is_a_clear_error(bpe_folder):
    with pytest.raises(DataError, match="model_type"):
        load_tokenizer(bpe_folder)


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(DataError, match="tokenizer.json, vocab.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="neither a model folder nor a .gguf"):
        load_tokenizer(tmp_path / "absent")


def test_special_ids_prefer_the_model_config(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    assert special_ids(tokenizer, {"pad_token_id": 5, "eos_token_id": 7}).pad == 5
    assert special_ids(tokenizer, {"eos_token_id": 7}).eos == 7


@pytest.mark.slow
def test_gguf_path_goes_to_the_gguf_tokenizer_and_serves_causal_lm(smollm2_gguf):
    pytest.importorskip("gguf")
    from minift.data import Example, Task, encode

    tokenizer = load_tokenizer(smollm2_gguf)
    text = "Sentence: Operating profit rose to EUR 13.1 mn .\nSentiment: positive"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text
    ids = special_ids(tokenizer, {"eos_token_id": 2, "pad_token_id": 2})  # SmolLM2-Instruct's config.json
    assert (ids.eos, ids.pad) == (2, 2) and not uses_token_type_ids(tokenizer)
    task = Task(name="fpb", kind="causal-lm", splits={}, label_names=["negative", "positive"],
                metric_names=["accuracy"], main_metric="accuracy", prompt="Sentence: {text}\nSentiment:",
                label_words=["negative", "positive"])
    feature = encode(task, [Example(text="Operating profit rose to EUR 13.1 mn .", label=1)], tokenizer, 64, ids)[0]
    assert feature["input_ids"][-1] == 2
    scored = [t for t, y in zip(feature["input_ids"], feature["labels"]) if y != -100]
    assert tokenizer.decode(scored[:-1]) == " positive"


def test_llama_style_template_does_not_ask_for_token_type_ids(bpe_folder):
    from tokenizers import processors

    from minift.data import Example, Task, encode

    (bpe_folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tokenizer = load_tokenizer(bpe_folder)
    # the template llama.cpp's metadata gives a Llama / SmolLM tokenizer: "<s> A" and "<s> A <s> B:1"
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                             special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    assert not uses_token_type_ids(tokenizer)
    task = Task(name="t", kind="classification", splits={}, label_names=["a", "b"], metric_names=["accuracy"],
                main_metric="accuracy")
    pair = [Example(text="the food", text_pair="was great", label=1)]
    assert "token_type_ids" not in encode(task, pair, tokenizer)[0]
    assert encode(task, pair, tokenizer, token_type_ids=True)[0]["token_type_ids"][-1] == 1  # explicit override
