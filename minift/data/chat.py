"""Chat templates: a conversation → the text a chat model was tuned on, rendered with Jinja2 as transformers'
``apply_chat_template`` renders it.

Where the template comes from (:func:`load_chat_template`), first found wins:

1. ``--chat-template FILE`` (a Jinja file), or ``plain`` for :data:`PLAIN_TEMPLATE`;
2. the checkpoint's own: ``chat_template`` in ``tokenizer_config.json`` (a string, or a list of named templates of
   which "default" is taken), ``chat_template.jinja`` beside it (where newer transformers save it), or the GGUF
   metadata ``tokenizer.chat_template``;
3. :data:`PLAIN_TEMPLATE`, minift's documented plain format::

       <system content>\\n\\n                      (only when there is a system message)
       ### User:\\n<content>\\n\\n
       ### Assistant:\\n<content><eos>\\n\\n
       ### Assistant:\\n                           (the generation prompt)

The environment is transformers' (``transformers.utils.chat_template_utils._compile_jinja_template``): an
``ImmutableSandboxedEnvironment`` (templates from the Hub are untrusted code) with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}`` block rendered as its body, a ``tojson``
filter that does not escape HTML, and the globals ``raise_exception`` (the message becomes a ``DataError``) and
``strftime_now``. A template sees ``messages``, ``tools`` and ``documents`` (None), ``add_generation_prompt`` and
the tokenizer's special tokens by name (``bos_token``, ``eos_token``, ...). The rendered text is tokenised without
the tokenizer's own special tokens, as transformers does: the template writes them.

Jinja2 is needed only here: ``pip install "minift[chat]"``.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from minift.data.errors import DataError
from minift.data.tokenizer import gguf_chat_template

JINJA_MIN = (3, 1, 6)  # older Jinja2 releases have known sandbox escapes (transformers requires the same)
PLAIN = "plain"  # --chat-template plain: minift's plain template even when the checkpoint has its own

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

# tokenizer_config.json keys of the special tokens transformers passes to a template (its special_tokens_map)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _jinja():
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise DataError('instruction tuning (--task-kind sft) renders chat templates with Jinja2: '
                        'pip install "minift[chat]" (or pip install "jinja2>=3.1.6")') from None
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < JINJA_MIN:
        raise DataError(f"Jinja2 {jinja2.__version__} is too old to render chat templates safely (sandbox escapes "
                        f"fixed in 3.1.6): pip install -U \"jinja2>=3.1.6\"")
    return jinja2, ImmutableSandboxedEnvironment


def _environment():
    """The Jinja environment transformers renders chat templates in."""
    jinja2, sandboxed = _jinja()
    from jinja2.ext import Extension

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag) rendered as its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = sandboxed(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template and the special tokens it may name.

    Args:
        source: the Jinja template text.
        special_tokens: ``{"bos_token": "<s>", "eos_token": "</s>", ...}`` (the variables a template reads).
        origin: where the template came from, for messages (a file, "tokenizer_config.json", "GGUF", "plain").
    """

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, origin: str = "chat template"):
        self.source, self.origin = source, origin
        self.special_tokens = dict(special_tokens or {})
        jinja2, _ = _jinja()
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as err:
            raise DataError(f"the chat template of {origin} is not valid Jinja (line {err.lineno}: {err})") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The text of ``messages`` (``[{"role", "content"}, ...]``), followed by the assistant's turn opening when
        ``add_generation_prompt``. A template's ``raise_exception`` becomes a ``DataError``."""
        jinja2, _ = _jinja()
        try:
            return self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.exceptions.TemplateError as err:
            raise DataError(f"the chat template of {self.origin} refused the conversation: {err}") from None

    def assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its assistant turns.

        An assistant turn ``i`` spans from the end of ``render(messages[:i], add_generation_prompt=True)`` (its
        opening, e.g. ``<|im_start|>assistant\\n``) to the end of ``render(messages[:i + 1])``: its content and
        whatever the template writes to close it (``<|im_end|>``, the EOS), which the model must learn to write.
        Found by rendering prefixes, never by searching the text for role names.

        Raises:
            DataError: the template renders a conversation's beginning differently once later turns follow (it
                is not prefix-stable), so turns cannot be located.
        """
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            opening = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[:i + 1])
            if not (through.startswith(opening) and text.startswith(through)):
                raise DataError(f"the chat template of {self.origin} renders the start of a conversation differently "
                                f"when more turns follow (turn {i + 1}), so the assistant's tokens cannot be located; "
                                "pass a prefix-stable template with --chat-template FILE (or --chat-template plain)")
            spans.append((len(opening), len(through)))
        return text, spans


def _token_text(value) -> str | None:
    # tokenizer_config.json writes special tokens as strings or as {"content": ...} objects
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _folder_template(folder: Path) -> tuple[str | None, dict]:
    """(the template of a model folder or None, its tokenizer_config.json)."""
    path = folder / "tokenizer_config.json"
    config = {}
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template, config


def load_chat_template(model_path: str | Path, tokenizer, special=None, override: str | None = None) -> ChatTemplate:
    """The chat template of a checkpoint (see the module docstring for the order).

    Args:
        model_path: the HF model folder or ``.gguf`` file.
        tokenizer: its ``tokenizers.Tokenizer`` (turns special ids into the token strings a template names).
        special: its ``minift.data.tokenizer.SpecialIds`` (bos / eos / pad when the folder does not name them).
        override: ``--chat-template``: a Jinja file, ``"plain"``, or None for the checkpoint's own.
    """
    model_path = Path(model_path)
    tokens = {}
    if special is not None:
        for key, token_id in (("bos_token", special.bos), ("eos_token", special.eos), ("pad_token", special.pad)):
            if token_id is not None and tokenizer.id_to_token(token_id) is not None:
                tokens[key] = tokenizer.id_to_token(token_id)
    template, origin = None, "plain"
    if model_path.is_dir():
        template, config = _folder_template(model_path)
        origin = f"{model_path / 'tokenizer_config.json'}"
        tokens.update({key: _token_text(config[key]) for key in SPECIAL_TOKEN_KEYS if _token_text(config.get(key))})
    elif model_path.suffix == ".gguf":
        template, origin = gguf_chat_template(model_path), f"{model_path} (tokenizer.chat_template)"
    if override == PLAIN or template is None and override is None:
        template, origin = PLAIN_TEMPLATE, "minift's plain template"
    elif override is not None:
        path = Path(override).expanduser()
        if not path.is_file():
            raise DataError(f"--chat-template {override}: no such file; pass a Jinja template file, or 'plain'")
        template, origin = path.read_text(encoding="utf-8"), str(path)
    return ChatTemplate(template, tokens, origin)
