"""Every task built from the real files in ../shared/data: split sizes and label distributions as MANIFEST.md
lists them (or as the task's documented construction gives them), no leakage, data-dir resolution."""
import functools
import json
import re
from collections import Counter

import pytest

from minift.data import DataError, load_task, resolve_data_dir, task_names
from minift.data.readers_text import clean_agnews


@functools.cache
def _load(name, root):
    """load_task once per name for this module (the real files do not change during a run)."""
    return load_task(name, root)


def _sizes(task):
    return {split: len(examples) for split, examples in task.splits.items()}


@pytest.mark.parametrize("name", ["agnews", "agnews_sup", "ag_news"])
def test_agnews_split_9_to_1(shared_data, name):
    task = _load(name, shared_data)
    assert task.name == "agnews" and task.kind == "classification" and task.num_labels == 4
    assert _sizes(task) == {"train": 6840, "test": 760}
    total = Counter(task.label_counts("train")) + Counter(task.label_counts("test"))
    assert total == {label: 1900 for label in task.label_names}  # MANIFEST: 1,900 per class
    assert not {ex.id for ex in task.splits["train"]} & {ex.id for ex in task.splits["test"]}
    again = load_task("agnews", shared_data)  # the seeded split is fixed
    assert [ex.id for ex in again.splits["test"]] == [ex.id for ex in task.splits["test"]]
    assert all("\\" not in ex.text for ex in task.splits["train"])


def test_agnews_text_is_title_plus_description_with_escapes_resolved(shared_data):
    task = _load("agnews", shared_data)
    by_line = {ex.id: ex.text for split in task.splits.values() for ex in split}
    # line 3 of test.csv: `second\team` (the backslash is the original's newline) and `#36;10` (a dollar sign)
    text = by_line["test.csv:3"]
    assert text.startswith("The Race is On: Second Private Team Sets Launch Date")
    assert "second team" in text and "$10 million" in text
    assert clean_agnews('a\\\\b  #36;5') == "a b $5"
    assert clean_agnews("he isn #39;t, In  quot;x quot; &lt;b&gt;y&lt;/b&gt; #151; A&amp;B") == \
        'he isn\'t, In "x" y — A&B'
    texts = [ex.text for split in task.splits.values() for ex in split]
    for remnant in ("#39;", "quot;", "&lt;", "&amp;", "<b>", "\\"):
        assert not any(remnant in text for text in texts), remnant


@pytest.mark.parametrize("name,sizes", [("restaurant", {"train": 3452, "dev": 150, "test": 1120}),
                                        ("laptop", {"train": 2163, "dev": 150, "test": 638})])
def test_aspect_sentiment_pairs(shared_data, name, sizes):
    task = _load(name + "_sup", shared_data)
    assert _sizes(task) == sizes and task.num_labels == 3  # MANIFEST
    for split in sizes:
        raw = json.loads((shared_data / name / f"{split}.json").read_text())
        assert task.label_counts(split) == Counter(item["polarity"] for item in raw.values())
    example = task.splits["train"][0]
    assert example.text_pair is not None and example.text in example.text_pair  # (term, sentence)


def test_acl_train_drops_contexts_leaked_into_dev_and_test(shared_data):
    task = _load("acl_sup", shared_data)
    assert _sizes(task) == {"train": 1745 - 24, "dev": 154, "test": 154}  # MANIFEST: 12 leak into each
    held_out = {ex.text for ex in task.splits["dev"]} | {ex.text for ex in task.splits["test"]}
    assert not held_out & {ex.text for ex in task.splits["train"]}
    assert task.label_names == ["Background", "Uses", "CompareOrContrast", "Motivation", "Extends", "Future"]
    counts = task.label_counts("train")
    raw = {"Background": 888, "Uses": 324, "CompareOrContrast": 315, "Motivation": 79, "Extends": 77, "Future": 62}
    assert sum(raw[k] - counts[k] for k in raw) == 24 and all(counts[k] <= raw[k] for k in raw)
    assert all("&quot;" not in ex.text for ex in task.splits["train"])


@pytest.mark.parametrize("name,base,classes", [("agnews_fs", "agnews", 4), ("restaurant_fs", "restaurant", 3),
                                               ("laptop_fs", "laptop", 3), ("acl_fs", "acl", 6)])
def test_few_shot_is_a_fixed_stratified_sample_of_train(shared_data, name, base, classes):
    task, full = _load(name, shared_data), _load(base, shared_data)
    assert len(task.splits["train"]) == 16 * classes
    assert set(task.label_counts("train").values()) == {16}
    assert {ex.id for ex in task.splits["train"]} <= {ex.id for ex in full.splits["train"]}
    assert len(task.splits["test"]) == len(full.splits["test"])
    assert [ex.id for ex in load_task(name, shared_data).splits["train"]] == [ex.id for ex in task.splits["train"]]


def test_glue_tasks(shared_data):
    sst2 = _load("sst2", shared_data)
    assert _sizes(sst2) == {"train": 60614, "dev": 6735, "test": 872}
    cola = _load("cola", shared_data)
    assert _sizes(cola) == {"train": 8551, "test": 1043} and cola.main_metric == "mcc"
    assert cola.label_counts("test") == {"acceptable": 721, "unacceptable": 322}  # MANIFEST
    stsb = _load("stsb", shared_data)
    assert _sizes(stsb) == {"train": 5749, "dev": 1500, "test": 1379} and stsb.kind == "regression"
    assert stsb.num_labels == 1 and all(0.0 <= ex.label <= 5.0 for ex in stsb.splits["train"])
    assert stsb.metric_names[:2] == ["pearson", "spearman"]
    mrpc = _load("mrpc", shared_data)
    assert _sizes(mrpc) == {"train": 3668, "dev": 408, "test": 1725}
    assert mrpc.label_counts("test") == {"equivalent": 1147, "not_equivalent": 578}  # MANIFEST
    assert all(ex.text_pair for ex in mrpc.splits["test"]) and "f1" in mrpc.metric_names


def _phrasebank(path):
    """Independent reading of a Sentences_*Agree.txt: unique sentence -> set of labels given to it."""
    labels = {}
    for line in path.read_bytes().decode("iso-8859-1").splitlines():
        sentence, _, label = line.rpartition("@")
        labels.setdefault(sentence.strip(), set()).add(label)
    return labels


def test_financial_phrasebank_has_no_sentence_in_both_splits(shared_data):
    task = _load("financial_phrasebank", shared_data)
    train, test = ({ex.text for ex in task.splits[s]} for s in ("train", "test"))
    assert not train & test
    assert len(train) == len(task.splits["train"]) and len(test) == len(task.splits["test"])  # deduplicated
    folder = shared_data / "financial_phrasebank"
    all50, all66 = _phrasebank(folder / "Sentences_50Agree.txt"), _phrasebank(folder / "Sentences_66Agree.txt")
    unambiguous = {s for s, labels in all50.items() if len(labels) == 1}
    assert test <= set(all66) and len(test) == round(0.2 * len(all66))  # 20% of 66Agree's unique sentences
    assert train == unambiguous - test  # the rest of 50Agree, minus sentences given two labels
    names = task.label_names
    assert all({names[ex.label]} == all66[ex.text] for ex in task.splits["test"])
    lm = _load("financial_phrasebank_lm", shared_data)
    assert lm.kind == "causal-lm" and lm.label_words == ["negative", "neutral", "positive"]
    assert [ex.text for ex in lm.splits["test"]] == [ex.text for ex in task.splits["test"]]


def test_bionlp2004_train_from_brat_and_test_from_iob2(shared_data):
    task = _load("bionlp2004", shared_data)
    assert task.kind == "token-classification" and task.main_metric == "f1"
    assert len(task.splits["test"]) == 3856  # MANIFEST
    train_tags = task.label_counts("train")
    # every brat entity becomes exactly one B- tag of its type
    brat = Counter(line.split("\t")[1].split(" ")[0] for ann in (shared_data / "bionlp2004" / "train").glob("*.ann")
                   for line in ann.read_text().splitlines() if line.startswith("T"))
    assert {k[2:]: v for k, v in train_tags.items() if k.startswith("B-")} == brat
    test_tags = Counter(line.split("\t")[1] for line in
                        (shared_data / "bionlp2004" / "test" / "Genia4EReval1.iob2").read_text().splitlines()
                        if "\t" in line)
    assert task.label_counts("test") == test_tags
    assert abs(len(task.splits["train"]) - 18546) < 100  # JNLPBA's own train file has 18,546 sentences
    for example in task.splits["train"][:200]:
        assert len(example.words) == len(example.label)
        tags = [task.label_names[i] for i in example.label]
        assert not any(t.startswith("I-") and (i == 0 or tags[i - 1] == "O") for i, t in enumerate(tags))


def test_bionlp2004_sentence_words_follow_entity_offsets(shared_data):
    task = _load("bionlp2004", shared_data)
    first = task.splits["train"][0]  # 90110496.txt: "Anti-Ro(SSA) autoantibodies are associated with ..."
    ann = (shared_data / "bionlp2004" / "train" / "90110496.ann").read_text().splitlines()
    surface = ann[0].split("\t")[2]
    tags = [task.label_names[i] for i in first.label]
    start = tags.index("B-protein")
    end = start + 1
    while end < len(tags) and tags[end] == "I-protein":
        end += 1
    assert re.sub(r"\s", "", "".join(first.words[start:end])) == re.sub(r"\s", "", surface)


def test_every_registered_name_loads(shared_data):
    for name in task_names():
        task = _load(name, shared_data)
        assert all(len(split) > 0 for split in task.splits.values()), name
        assert task.main_metric == task.metric_names[0]


def test_data_dir_from_argument_then_env_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIFT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("MINIFT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "minift" / "data"


def test_missing_file_names_file_place_and_source(tmp_path):
    with pytest.raises(DataError) as err:
        load_task("agnews", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "agnews" / "test.csv") in message and "MINIFT_DATA" in message
    assert "github.com" in message


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown task 'nope'.*agnews"):
        load_task("nope")


def test_task_validates_its_fields():
    from minift.data import Task

    with pytest.raises(ValueError, match="kind 'ner'"):
        Task(name="t", kind="ner", splits={}, label_names=[], metric_names=["f1"], main_metric="f1")
    with pytest.raises(ValueError, match="main metric 'f1' not in"):
        Task(name="t", kind="classification", splits={}, label_names=["a"], metric_names=["accuracy"],
             main_metric="f1")
    with pytest.raises(ValueError, match="needs a prompt"):
        Task(name="t", kind="causal-lm", splits={}, label_names=["a"], metric_names=["accuracy"],
             main_metric="accuracy")
    regression = Task(name="t", kind="regression", splits={"train": []}, label_names=[], metric_names=["pearson"],
                      main_metric="pearson")
    assert regression.num_labels == 1
    with pytest.raises(ValueError, match="regression task"):
        regression.label_counts("train")
