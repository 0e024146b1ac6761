"""Malformed input is reported with the file and the line: wrong column counts, missing text, unknown labels,
bad encodings, empty splits — written into tmp_path in each data set's own format."""
import json
import re

import pytest

from minift.data import DataError, load_task

AG_HEADER = "label,title,description\r\n"


def _agnews(tmp_path, body: bytes):
    folder = tmp_path / "agnews"
    folder.mkdir()
    (folder / "test.csv").write_bytes(AG_HEADER.encode() + body)
    return folder / "test.csv"


def _expect(path, line, pattern, call):
    with pytest.raises(DataError) as err:
        call()
    message = str(err.value)
    assert f"{path}, line {line}" in message, message
    assert re.search(pattern, message), message


def test_agnews_wrong_column_count(tmp_path):
    path = _agnews(tmp_path, b'3,Title,Description\r\n3,"only title"\r\n')
    _expect(path, 3, "expected 3 columns, found 2", lambda: load_task("agnews", tmp_path))


def test_agnews_unknown_label(tmp_path):
    path = _agnews(tmp_path, b"3,Title,Description\r\n9,Title,Description\r\n")
    _expect(path, 3, "unknown label '9'", lambda: load_task("agnews", tmp_path))


def test_agnews_missing_text(tmp_path):
    path = _agnews(tmp_path, b'3,Title,Description\r\n2,"",\r\n')
    _expect(path, 3, "missing text", lambda: load_task("agnews", tmp_path))


def test_agnews_bad_encoding_names_the_line(tmp_path):
    path = _agnews(tmp_path, b"3,Title,Description\r\n3,Caf\xe9,Description\r\n")
    _expect(path, 3, "bad encoding.*utf-8", lambda: load_task("agnews", tmp_path))


def test_agnews_multiline_quoted_row_reports_its_first_line(tmp_path):
    path = _agnews(tmp_path, b'3,Title,"two\r\nlines"\r\n3,Title\r\n')
    _expect(path, 4, "expected 3 columns", lambda: load_task("agnews", tmp_path))


def test_empty_split_is_an_error(tmp_path):
    _agnews(tmp_path, b"")
    with pytest.raises(DataError, match="split 'test' is empty.*test.csv"):
        load_task("agnews", tmp_path)


def test_jsonl_bad_json_and_unknown_label(tmp_path):
    folder = tmp_path / "acl_arc"
    folder.mkdir()
    good = json.dumps({"string": "a citation context", "label": "Uses", "citation_id": "x"})
    for split in ("dev", "test"):
        (folder / f"{split}.jsonl").write_text(good + "\n")
    (folder / "train.jsonl").write_text(good + "\n" + '{"string": "broken"\n')
    _expect(folder / "train.jsonl", 2, "not valid JSON", lambda: load_task("acl", tmp_path))
    (folder / "train.jsonl").write_text(good + "\n\n" + json.dumps({"string": "x", "label": "Nope"}) + "\n")
    _expect(folder / "train.jsonl", 3, "unknown label 'Nope'.*Background", lambda: load_task("acl", tmp_path))
    (folder / "train.jsonl").write_text(json.dumps({"label": "Uses"}) + "\n")
    _expect(folder / "train.jsonl", 1, "missing text in column 'string'", lambda: load_task("acl", tmp_path))


def test_tsv_wrong_columns_and_stsb_bad_score(tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text("sentence\tlabel\ngood film\t1\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    _expect(folder / "dev.tsv", 3, "expected 2 columns, found 3", lambda: load_task("sst2", tmp_path))
    folder = tmp_path / "stsb"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"stsb-en-{split}.csv").write_text("A man.,A person.,4.5\n")
    (folder / "stsb-en-test.csv").write_text('A man.,A person.,4.5\n"A, quoted",B,high\n')
    _expect(folder / "stsb-en-test.csv", 2, "score 'high' is not a number", lambda: load_task("stsb", tmp_path))


def test_phrasebank_line_without_label(tmp_path):
    folder = tmp_path / "financial_phrasebank"
    folder.mkdir()
    lines = "\n".join(f"Sentence {i} .@{label}" for i, label in enumerate(["neutral", "positive"] * 5))
    (folder / "Sentences_66Agree.txt").write_text(lines + "\n")
    (folder / "Sentences_50Agree.txt").write_bytes((lines + "\nNo label here\n").encode("iso-8859-1"))
    _expect(folder / "Sentences_50Agree.txt", 11, "no '@'", lambda: load_task("financial_phrasebank", tmp_path))


def test_brat_text_mismatch_and_iob2_bad_tag(tmp_path):
    train, test = tmp_path / "bionlp2004" / "train", tmp_path / "bionlp2004" / "test"
    train.mkdir(parents=True)
    test.mkdir()
    (train / "1.txt").write_text("IL-2 gene expression in T cells.\n")
    (train / "1.ann").write_text("T1\tDNA 0 9\tIL-2 gene\nT2\tcell_type 24 31\tT cells\n")
    (test / "Genia4EReval1.iob2").write_text("IL-2\tB-protein\nis\tO\n\nT\tB-cell_type\ncells\tI-cell_type\n")
    task = load_task("bionlp2004", tmp_path)
    assert [task.label_names[i] for i in task.splits["train"][0].label] == [
        "B-DNA", "I-DNA", "O", "O", "B-cell_type", "I-cell_type", "O"]
    assert task.splits["train"][0].words == ("IL-2", "gene", "expression", "in", "T", "cells", ".")
    assert len(task.splits["test"]) == 2
    (test / "Genia4EReval1.iob2").write_text("IL-2\tB-protein\nis\tB-verb\n")
    _expect(test / "Genia4EReval1.iob2", 2, "unknown tag 'B-verb'", lambda: load_task("bionlp2004", tmp_path))
    (train / "1.ann").write_text("T1\tDNA 0 9\tIL-3 gene\n")
    with pytest.raises(DataError, match=r"1.txt: entity DNA 0 9 reads 'IL-2 gene'.*'IL-3 gene'"):
        load_task("bionlp2004", tmp_path)
    (train / "1.ann").write_text("T1\tDNA 0 x\tIL-2 gene\n")
    _expect(train / "1.ann", 1, "one contiguous span", lambda: load_task("bionlp2004", tmp_path))


def test_entity_boundary_inside_a_word_splits_the_word(tmp_path):
    train, test = tmp_path / "bionlp2004" / "train", tmp_path / "bionlp2004" / "test"
    train.mkdir(parents=True)
    test.mkdir()
    (train / "1.txt").write_text("IL-2-induced cells.\n")
    (train / "1.ann").write_text("T1\tprotein 0 4\tIL-2\n")
    (test / "Genia4EReval1.iob2").write_text("x\tO\n")
    example = load_task("bionlp2004", tmp_path).splits["train"][0]
    assert example.words == ("IL-2", "-induced", "cells", ".")  # as GENIA tokenises "IL-2 -induced"
    assert example.label[:2] == (9, 0)


def test_custom_file_tasks(tmp_path):
    csv_path = tmp_path / "mine.csv"
    rows = [f'"text number {i}, with a comma",{["spam", "ham"][i % 2]}' for i in range(20)]
    csv_path.write_text("text,label\n" + "\n".join(rows) + "\n")
    task = load_task(f"file:{csv_path}")
    assert task.kind == "classification" and task.label_names == ["ham", "spam"]
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 18, "test": 2}
    csv_path.write_text("text,label\n" + "\n".join(rows) + "\nlast row,spam,extra\n")
    _expect(csv_path, 22, "expected 2 columns, found 3", lambda: load_task(f"file:{csv_path}"))
    csv_path.write_text("sentence,label\na,1\nb,0\n")
    _expect(csv_path, 1, "lacks the column.*'text'", lambda: load_task(f"file:{csv_path}"))
    assert load_task(f"file:{csv_path},{csv_path}", text_column="sentence").label_names == ["0", "1"]


def test_custom_train_test_files_regression_and_unknown_label(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"t": f"x{i}", "y": i * 0.5}) + "\n" for i in range(6)))
    test.write_text(json.dumps({"t": "z", "y": 1.25}) + "\n")
    task = load_task(f"file:{train},{test}", text_column="t", label_column="y")
    assert task.kind == "regression" and task.num_labels == 1 and task.splits["test"][0].label == 1.25
    tsv = tmp_path / "folder"
    tsv.mkdir()
    (tsv / "train.tsv").write_text("text\tlabel\na\t0\nb\t1\nc\t2\n")
    (tsv / "test.tsv").write_text("text\tlabel\nd\t1\ne\t7\n")
    _expect(tsv / "test.tsv", 3, "unknown label '7'.*train labels", lambda: load_task(f"file:{tsv}"))
    (tsv / "test.tsv").write_text("text\tlabel\nd\t1\n\t2\n")
    _expect(tsv / "test.tsv", 3, "missing text", lambda: load_task(f"file:{tsv}"))
    (tsv / "test.tsv").write_text("text\tlabel\n")
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_task(f"file:{tsv}")
    with pytest.raises(DataError, match="data file not found"):
        load_task(f"file:{tmp_path / 'absent.csv'}")


def test_unterminated_quote_is_reported(tmp_path):
    path = _agnews(tmp_path, b'3,Title,Description\r\n3,"Title,desc\r\n')
    _expect(path, 3, "malformed ','-separated row: unexpected end of data", lambda: load_task("agnews", tmp_path))


def test_custom_pair_columns_and_explicit_kind(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\tscore\n" + "".join(f"first {i}\tsecond {i}\t{i % 3}\n" for i in range(10)))
    task = load_task(f"file:{path},{path}", text_column="a", text_pair_column="b", label_column="score")
    assert task.kind == "classification" and task.label_names == ["0", "1", "2"]
    assert task.splits["train"][4].text_pair == "second 4" and task.splits["train"][4].label == 1
    task = load_task(f"file:{path},{path}", text_column="a", text_pair_column="b", label_column="score",
                     kind="regression")
    assert task.kind == "regression" and task.splits["test"][2].label == 2.0
    with pytest.raises(DataError, match="kind must be"):
        load_task(f"file:{path}", text_column="a", label_column="score", kind="ranking")


def _file_task_error(path, pattern):
    with pytest.raises(DataError) as err:
        load_task(f"file:{path}")
    assert re.search(pattern, str(err.value)), str(err.value)
    return str(err.value)


def test_mostly_numeric_labels_with_a_typo_name_the_rows(tmp_path):
    path = tmp_path / "scores.csv"
    rows = [f"text {i},{i * 0.37:.2f}" for i in range(40)] + ["oops,n/a"]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    message = _file_task_error(path, r"40 of 41 labels are numbers but 1 are not \(scores.csv:42 'n/a'\)")
    assert "--task-kind regression" in message and "--task-kind classification" in message
    assert load_task(f"file:{path}", kind="classification").num_labels == 41  # said explicitly: allowed


def test_empty_label_and_single_class_are_errors(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\na,pos\nb,\nc,neg\n")
    _expect(path, 3, "empty label in column 'label'", lambda: load_task(f"file:{path}"))
    path.write_text("text,label\n" + "".join(f"t{i},pos\n" for i in range(10)))
    _file_task_error(path, r"every training row has the label 'pos'.*at least two classes.*--label-column")


@pytest.mark.parametrize("content, suffix, pattern", [
    ("text\tlabel\na\t0\nb\t1\n", ".csv", r"tab-separated, not comma-separated: rename it to \.tsv"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', ".csv", r"JSON lines, not CSV: rename it to \.jsonl"),
    ("I loved this film,1\nterrible acting,0\n", ".csv", r"is not a header.*need a first row naming the columns"),
])
def test_misnamed_or_headerless_files_say_what_they_are(tmp_path, content, suffix, pattern):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    _file_task_error(path, pattern)


def test_a_comma_in_an_existing_file_path_is_one_file(tmp_path):
    path = tmp_path / "reviews, 2024.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    task = load_task(f"file:{path}")
    assert sum(len(v) for v in task.splits.values()) == 20


def test_corrupt_tokenizer_json_and_a_file_given_as_folder(tmp_path):
    from minift.data import load_tokenizer

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match="tokenizer.json cannot be read.*truncated or corrupt"):
        load_tokenizer(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(DataError, match="is a file, not a model folder"):
        load_tokenizer(weights)
