"""minift.data: tasks from the real data files, tokenizers, encoding, padding and metrics.

``load_task(name, data_dir=None) -> Task``; ``load_tokenizer(path)``; ``encode(task, examples, tokenizer,
max_length)`` -> features; ``collate(features, pad_id)`` / ``Collator`` -> padded tensors;
``compute_metrics(task, predictions, labels)``; causal-LM tasks are scored from generated text parsed with
``parse_label`` (generation itself: ``minift.train.evaluate.generate_labels``).
"""
from minift.data.collate import Collator, collate
from minift.data.encode import (
    encode,
    encode_causal_lm,
    encode_task,
    encode_words,
    format_prompt,
    parse_label,
)
from minift.data.errors import DataError
from minift.data.example import IGNORE_INDEX, Example, Task
from minift.data.metrics import classification_report, compute_metrics
from minift.data.ner import entities, ner_report, ner_scores
from minift.data.paths import resolve_data_dir
from minift.data.tasks import load_task, task_names
from minift.data.tokenizer import SpecialIds, load_tokenizer, special_ids, uses_token_type_ids

__all__ = [
    "IGNORE_INDEX", "Collator", "DataError", "Example", "SpecialIds", "Task", "classification_report", "collate",
    "compute_metrics", "encode", "encode_causal_lm", "encode_task", "encode_words", "entities", "format_prompt",
    "load_task", "load_tokenizer", "ner_report", "ner_scores", "parse_label", "resolve_data_dir", "special_ids",
    "task_names", "uses_token_type_ids",
]
