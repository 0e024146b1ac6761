"""The task registry: ``load_task(name)`` builds a :class:`~minift.data.example.Task` from the real files.

Every name, its aliases, its data folder and how its splits are built:

===========================  =====================  ==============================================================
task (aliases)               folder                 splits
===========================  =====================  ==============================================================
agnews (agnews_sup, ag_news) agnews/                test.csv split 9:1 with seed 42: 6,840 train / 760 test
agnews_fs                    agnews/                16 train examples per class (64) drawn with seed 42; full test
restaurant (restaurant_sup)  restaurant/            3,452 / 150 / 1,120; input = (aspect term, sentence)
restaurant_fs                restaurant/            16 per class (48) of train; full dev and test
laptop (laptop_sup)          laptop/                2,163 / 150 / 638
laptop_fs                    laptop/                16 per class (48) of train
acl (acl_sup, acl_arc)       acl_arc/               1,721 / 154 / 154 (train minus the contexts in dev or test)
acl_fs                       acl_arc/               16 per class (96) of the cleaned train
sst2                         sst2/                  60,614 / 6,735 / 872 (test = GLUE dev)
cola                         cola/                  8,551 / 1,043 (GLUE dev: both dev files); main metric MCC
stsb                         stsb/                  5,749 / 1,500 / 1,379; regression (Pearson, Spearman)
mrpc                         mrpc/                  3,668 / 408 / 1,725 (test = msr_paraphrase_test.txt)
financial_phrasebank (fpb)   financial_phrasebank/  3,994 / 842, classification (encoders), no sentence in both
financial_phrasebank_lm      financial_phrasebank/  the same splits as a causal-LM task (prompt -> label word);
(fpb_lm)                                            scored by generating (train.evaluate)
bionlp2004 (jnlpba)          bionlp2004/            18,555 sentences from brat / 3,856 (Genia4EReval1.iob2); NER
file:PATH                    (PATH itself)          a custom CSV/TSV/JSONL task, see ``minift.data.readers_file``
===========================  =====================  ==============================================================
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from minift.data import readers_glue, readers_ner, readers_text
from minift.data.errors import DataError
from minift.data.example import (
    CLASSIFICATION_METRICS,
    NER_METRICS,
    REGRESSION_METRICS,
    SFT_METRICS,
    Task,
    few_shot_sample,
)
from minift.data.paths import data_file, resolve_data_dir
from minift.data.prompts import check_label_words, check_prompt
from minift.data.readers_file import FILE_KINDS, read_file_task

FEW_SHOT_PER_CLASS = 16  # examples per class in the *_fs tasks (load_task's few_shot_k, --few-shot-k)
FEW_SHOT_SEED = 42  # the seed drawing them (few_shot_seed, --few-shot-seed)

# Causal-LM form of a sentiment task: the model reads the prompt and generates the label word.
SENTIMENT_PROMPT = "Sentence: {text}\nSentiment:"
PARAPHRASE_PROMPT = "Sentence 1: {text}\nSentence 2: {text_pair}\nParaphrase?"
# The prompt of a file: causal-LM task without --prompt
FILE_PROMPT, FILE_PAIR_PROMPT = "Text: {text}\nLabel:", "Text 1: {text}\nText 2: {text_pair}\nLabel:"


@dataclass(frozen=True)
class _Spec:
    folder: str  # data set folder under the data directory
    files: tuple[str, ...]  # files that must exist (checked before reading, for a clear error)
    reader: Callable  # reader(folder_path) -> (splits, label_names)
    kind: str = "classification"
    metrics: tuple[str, ...] = CLASSIFICATION_METRICS
    description: str = ""


_ABSA_FILES = ("train.json", "dev.json", "test.json")
_SPECS: dict[str, _Spec] = {
    "agnews": _Spec("agnews", ("test.csv",), readers_text.read_agnews,
                    description="AG News test.csv split 9:1 with seed 42 (6,840 / 760); text = title + description"),
    "restaurant": _Spec("restaurant", _ABSA_FILES, readers_text.read_absa,
                        description="SemEval-2014 restaurants (Xu et al. split); input = (aspect term, sentence)"),
    "laptop": _Spec("laptop", _ABSA_FILES, readers_text.read_absa,
                    description="SemEval-2014 laptops (Xu et al. split); input = (aspect term, sentence)"),
    "acl": _Spec("acl_arc", ("train.jsonl", "dev.jsonl", "test.jsonl"), readers_text.read_acl,
                 description="ACL-ARC citation intent; train without the contexts that occur in dev or test"),
    "sst2": _Spec("sst2", ("train.tsv", "dev.tsv", "test.tsv"), readers_glue.read_sst2,
                  description="GLUE SST-2; test = GLUE dev (labelled)"),
    "cola": _Spec("cola", ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv"),
                  readers_glue.read_cola, metrics=("mcc", "accuracy"),
                  description="CoLA v1.0; test = GLUE dev (in-domain + out-of-domain dev)"),
    "stsb": _Spec("stsb", ("stsb-en-train.csv", "stsb-en-dev.csv", "stsb-en-test.csv"), readers_glue.read_stsb,
                  kind="regression", metrics=REGRESSION_METRICS, description="STS benchmark, score 0-5"),
    "mrpc": _Spec("mrpc", ("train.tsv", "dev.tsv", "msr_paraphrase_test.txt"), readers_glue.read_mrpc,
                  metrics=("accuracy", "f1"), description="MRPC; labelled test from msr_paraphrase_test.txt"),
    "financial_phrasebank": _Spec(
        "financial_phrasebank", ("Sentences_50Agree.txt", "Sentences_66Agree.txt"),
        readers_text.read_financial_phrasebank,
        description="Financial PhraseBank: test = 20% (seed 42) of the unique 66Agree sentences, "
        "train = the other unique 50Agree sentences"),
    "bionlp2004": _Spec("bionlp2004", ("train", "test/Genia4EReval1.iob2"), readers_ner.read_bionlp2004,
                        kind="token-classification", metrics=NER_METRICS,
                        description="JNLPBA 2004: train from brat standoff, test = Genia4EReval1.iob2"),
}

ALIASES = {
    "agnews_sup": "agnews", "ag_news": "agnews", "restaurant_sup": "restaurant", "laptop_sup": "laptop",
    "acl_sup": "acl", "acl_arc": "acl", "fpb": "financial_phrasebank", "jnlpba": "bionlp2004",
    "fpb_lm": "financial_phrasebank_lm",
}
FEW_SHOT = {"agnews_fs": "agnews", "restaurant_fs": "restaurant", "laptop_fs": "laptop", "acl_fs": "acl"}
# name -> (the classification task it is built on, prompt, label words in class order; None: the label names)
CAUSAL_LM = {"financial_phrasebank_lm": ("financial_phrasebank", SENTIMENT_PROMPT, None),
             "sst2_lm": ("sst2", SENTIMENT_PROMPT, None),
             "mrpc_lm": ("mrpc", PARAPHRASE_PROMPT, ["no", "yes"])}


def task_names() -> list[str]:
    """Every task name load_task accepts (besides ``file:PATH``), aliases included."""
    return sorted([*_SPECS, *ALIASES, *FEW_SHOT, *CAUSAL_LM])


def load_task(name: str, data_dir: str | Path | None = None, *, text_column: str = "text",
              label_column: str = "label", text_pair_column: str | None = None,
              kind: str | None = None, prompt: str | None = None, label_words: list[str] | None = None,
              few_shot_k: int | None = None, few_shot_seed: int | None = None) -> Task:
    """Build a task from its files.

    Args:
        name: a task name or alias (see the module docstring), or ``file:PATH`` for a custom task.
        data_dir: the data root; None: ``$MINIFT_DATA``, else ``~/.cache/minift/data``.
        text_column / label_column / text_pair_column / kind: options of ``file:`` tasks only; ``kind`` is
            classification, regression, causal-lm or sft (None: classification or regression, from the labels).
        prompt / label_words: causal-LM tasks only: the prompt template and the word of each class (in class-id
            order), in place of the task's own (``minift.data.prompts``).
        few_shot_k / few_shot_seed: ``_fs`` tasks only: training examples drawn per class (None: 16) and the seed
            that draws them (None: 42), the course's sample.

    Returns:
        The :class:`Task`, every split non-empty.

    Raises:
        DataError: unknown task, missing file (named, with where it was looked for and the public source),
            malformed row (file and line), empty split, or a bad prompt or label words.
    """
    few_shot = {"--few-shot-k": few_shot_k, "--few-shot-seed": few_shot_seed}
    given = [flag for flag, value in few_shot.items() if value is not None]
    if given and ALIASES.get(name, name) not in FEW_SHOT:
        raise DataError(f"{' and '.join(given)}: options of the few-shot tasks ({', '.join(FEW_SHOT)}); task "
                        f"{name!r} is not one")
    if few_shot_k is not None and (isinstance(few_shot_k, bool) or not isinstance(few_shot_k, int) or few_shot_k < 1):
        raise DataError(f"--few-shot-k must be a positive number of examples per class, got {few_shot_k!r}")
    key = name if name.startswith("file:") else ALIASES.get(name, name)
    _check_prompt_options(name, key, kind if name.startswith("file:") else _kind(key), prompt, label_words)
    if name.startswith("file:"):
        task = _file_task(name, text_column, label_column, text_pair_column, kind)
    else:
        task = _named_task(key, name, data_dir, few_shot_k, few_shot_seed)
    return _with_prompt(task, prompt, label_words) if task.kind == "causal-lm" else task


def _kind(key: str) -> str | None:
    """The kind of a named task, without reading its files (None: unknown name, reported by ``_named_task``)."""
    if key in CAUSAL_LM:
        return "causal-lm"
    spec = _SPECS.get(FEW_SHOT.get(key, key))
    return spec.kind if spec is not None else None


def _check_prompt_options(name: str, key: str, kind: str | None, prompt, label_words) -> None:
    """--prompt / --label-words are for causal-LM tasks: said before any file is read."""
    given = [flag for flag, value in (("--prompt", prompt), ("--label-words", label_words)) if value is not None]
    if given and kind != "causal-lm":
        lm_form = f" (its causal-LM form is {key}_lm)" if f"{key}_lm" in CAUSAL_LM else ""
        what = f"a {kind} task" if kind else "not one (pass --task-kind causal-lm)"
        raise DataError(f"{' and '.join(given)}: options of causal-LM tasks; task {name!r} is {what}{lm_form}")


def _with_prompt(task: Task, prompt: str | None, label_words: list[str] | None) -> Task:
    """A causal-LM task with its prompt and label words overridden where given, both checked."""
    prompt = task.prompt if prompt is None else prompt
    words = list(task.label_words if label_words is None else label_words)
    pair = any(ex.text_pair is not None for ex in task.splits["train"])
    check_prompt(prompt, pair, f"the prompt of task {task.name!r}")
    check_label_words(words, task.label_names, f"the label words of task {task.name!r}")
    return replace(task, prompt=prompt, label_words=words,
                   description=f"{task.description}; prompt {prompt!r}, label words {words}")


def _file_task(name: str, text_column: str, label_column: str, text_pair_column: str | None,
               kind: str | None) -> Task:
    spec = name[len("file:"):]
    if kind is not None and kind not in FILE_KINDS:
        raise DataError(f"{name}: kind must be one of {', '.join(FILE_KINDS)} (--task-kind), got {kind!r}")
    if kind == "sft":
        from minift.data.sft import read_sft_task

        custom = [flag for flag, value, default in (("--text-column", text_column, "text"),
                                                    ("--label-column", label_column, "label"),
                                                    ("--text-pair-column", text_pair_column, None))
                  if value != default]
        if custom:
            raise DataError(f"{', '.join(custom)}: an SFT file has fixed keys (prompt/response or messages), not "
                            "columns")
        splits = read_sft_task(spec)
        return Task(name=name, kind="sft", splits=splits, label_names=[], metric_names=list(SFT_METRICS),
                    main_metric=SFT_METRICS[0],
                    description=f"instruction tuning on the conversations of {spec}")
    read_kind = "classification" if kind == "causal-lm" else kind
    splits, labels, file_kind = read_file_task(spec, text_column=text_column, label_column=label_column,
                                               text_pair_column=text_pair_column, kind=read_kind)
    if kind == "causal-lm":
        prompt = FILE_PAIR_PROMPT if text_pair_column else FILE_PROMPT
        return Task(name=name, kind="causal-lm", splits=splits, label_names=labels,
                    metric_names=list(CLASSIFICATION_METRICS), main_metric=CLASSIFICATION_METRICS[0],
                    prompt=prompt, label_words=list(labels),
                    description=f"custom task from {spec} (prompt -> label word)")
    metrics = CLASSIFICATION_METRICS if file_kind == "classification" else REGRESSION_METRICS
    return Task(name=name, kind=file_kind, splits=splits, label_names=labels, metric_names=list(metrics),
                main_metric=metrics[0], description=f"custom task from {spec}")


def _named_task(key: str, name: str, data_dir: str | Path | None, few_shot_k: int | None = None,
                few_shot_seed: int | None = None) -> Task:
    if key in FEW_SHOT:
        k = FEW_SHOT_PER_CLASS if few_shot_k is None else few_shot_k
        seed = FEW_SHOT_SEED if few_shot_seed is None else few_shot_seed
        base = load_task(FEW_SHOT[key], data_dir)
        splits = dict(base.splits)
        splits["train"] = few_shot_sample(base.splits["train"], k, seed)
        return replace(base, name=key, splits=splits,
                       description=f"{base.description}; few-shot: {k} train examples per class "
                       f"(seed {seed}), {len(splits['train'])} in all")
    if key in CAUSAL_LM:
        base_name, prompt, words = CAUSAL_LM[key]
        base = load_task(base_name, data_dir)
        return replace(base, name=key, kind="causal-lm", prompt=prompt, label_words=list(words or base.label_names),
                       description=f"{base.description}; causal-LM form (prompt -> label word)")
    if key not in _SPECS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}, or file:PATH for a "
                        "CSV/TSV/JSONL file with text and label columns")
    spec = _SPECS[key]
    root = resolve_data_dir(data_dir)
    for file in spec.files:
        data_file(root, spec.folder, *file.split("/"))
    splits, labels = spec.reader(root / spec.folder)
    return Task(name=key, kind=spec.kind, splits=splits, label_names=labels, metric_names=list(spec.metrics),
                main_metric=spec.metrics[0], description=spec.description)
