"""Command-line flags of the PEFT methods' options, generated from their dataclasses in ``minift.peft.config``.

Every field of a method config is one flag named ``--<method>-<field>`` (``LoRAConfig.r`` → ``--lora-r``,
``AdapterConfig.reduction_factor`` → ``--adapter-reduction-factor``), typed from the field's annotation, with the
field's trailing comment as its help. A command adds them with ``add_method_flags(parser)`` and reads them back
with ``method_from_flags(name, vars(args))``: the values land under dotted keys (``"lora.r"``) and are checked by
the config itself, once. So a new option is added to its dataclass and nowhere else, and every command that
uses this module (``python -m minift.memory``; ``minift.train``) spells it the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Mapping
from typing import Any, Callable

from minift.peft.config import METHOD_CONFIGS, Method

NOT_FLAGS = ("prompt.token_ids",)  # computed from --prompt-text by a command that has the model's tokenizer
_BASE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def flag(dest: str) -> str:
    """The flag of a (dotted) key: ``batch_size`` → ``--batch-size``, ``lora.r`` → ``--lora-r``."""
    return "--" + dest.replace(".", "-").replace("_", "-")


def field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing comment in a dataclass's source (the one place a field is documented), by name."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source shipped: the help shows defaults only
        return {}
    return dict(re.findall(r"^    (\w+): [^#\n]*#\s*(.+)$", source, flags=re.MULTILINE))


def unwrap(annotation: str) -> tuple[type, bool, bool]:
    """(base type, optional, list) of a field annotation such as ``"list[str] | None"``.

    ``from __future__ import annotations`` keeps annotations as text; reading the text works on Python 3.9,
    where ``int | None`` does not evaluate.
    """
    optional = annotation.endswith(" | None")
    annotation = annotation.removesuffix(" | None")
    is_list = annotation.startswith("list[")
    if is_list:
        annotation = annotation[len("list["):-1]
    return _BASE_TYPES[annotation], optional, is_list


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case)."""
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


BOOL_FLAG = {"nargs": "?", "const": True, "type": parse_bool}  # ``--flag`` alone is true; ``--flag false`` works


def value_parser(annotation: str) -> Callable[[str], Any]:
    """An argparse ``type`` for a field annotation: ints, floats, strings, bools, comma-separated lists, and
    ``none`` / ``null`` for an optional field."""
    base, optional, is_list = unwrap(annotation)
    caster = parse_bool if base is bool else base

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            if is_list:
                return [caster(part.strip()) for part in text.split(",") if part.strip()]
            return caster(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}{' list' if is_list else ''}, "
                                             f"got {text!r}") from None

    parse.__name__ = base.__name__  # argparse names the type in its error messages
    return parse


def method_flags() -> list[tuple[str, str, Any, str]]:
    """``(dest, annotation, default, help)`` of every method option, e.g. ``("lora.r", "int", 8, "rank of ...")``."""
    out = []
    for method, cls in METHOD_CONFIGS.items():
        comments, defaults = field_comments(cls), cls()
        for f in dataclasses.fields(cls):
            dest = f"{method}.{f.name}"
            if dest not in NOT_FLAGS:
                out.append((dest, f.type, getattr(defaults, f.name), comments.get(f.name, "")))
    return out


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--<method>-<field>`` for every method option to ``parser`` (or an argument group of it); an absent
    flag leaves the config's default."""
    for dest, annotation, default, comment in method_flags():
        method = dest.partition(".")[0]
        help_text = f"{method}: {comment} (default: {default})".replace("%", "%%")
        extra = BOOL_FLAG if unwrap(annotation)[0] is bool else {"type": value_parser(annotation)}
        parser.add_argument(flag(dest), dest=dest, default=argparse.SUPPRESS, help=help_text,
                            metavar=dest.partition(".")[2].upper(), **extra)


def method_options(values: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The options of ``method`` among parsed flag values (``{"lora.r": 16, ...}`` → ``{"r": 16}``)."""
    prefix = method + "."
    return {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}


def method_from_flags(name: str, values: Mapping[str, Any], train_head: bool | None = None) -> Method:
    """``Method.of(name, train_head, **options given for it)``; the config checks them (``ValueError``)."""
    return Method.of(name, train_head, **method_options(values, name))
