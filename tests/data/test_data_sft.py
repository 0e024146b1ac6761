"""Instruction-tuning data: prompt/response and chat-message rows (and the errors of bad rows, by file and line), chat
templates rendered as transformers' apply_chat_template renders them (SmolLM2's own template from its GGUF, and a
whitespace-controlled template with raise_exception and bos/eos), and the loss on assistant tokens only — the mask
compared with transformers' assistant mask of a {% generation %}-tagged template."""
import json
import sys

import pytest

from minift.data import DataError, load_task, load_tokenizer
from minift.data.chat import PLAIN_TEMPLATE, ChatTemplate, load_chat_template
from minift.data.example import IGNORE_INDEX, Conversation, Message
from minift.data.sft import encode_conversation, encode_prompts, encode_sft
from minift.data.tokenizer import special_ids

CHATS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sentiment: profits fell."},
     {"role": "assistant", "content": "negative"}],
    [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "  and times 3?\n"}, {"role": "assistant", "content": " 12 "}],
]
# A Llama-2-style template: whitespace control by trim_blocks / lstrip_blocks, raise_exception, bos/eos variables.
LLAMA2_STYLE = """{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set messages = messages[1:] %}
{% endif %}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ bos_token + '[INST] ' }}
        {%- if loop.first and system is defined %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}
        {{- message['content'] | trim + ' [/INST]' }}
    {% else %}
        {{ ' ' + message['content'] | trim + ' ' + eos_token }}
    {% endif %}
{% endfor %}
"""


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _sft(path):
    return load_task(f"file:{path}", kind="sft")


def test_prompt_response_and_messages_rows(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)]
    rows += [{"messages": chat} for chat in CHATS] + [{"prompt": "q", "response": "a", "system": "be brief"}]
    task = _sft(_write_jsonl(tmp_path / "chat.jsonl", rows))
    assert task.kind == "sft" and task.main_metric == "response_loss" and not task.greater_is_better
    assert task.better(1.0, 2.0) and not task.better(2.0, 1.0)
    conversations = {c.id: c for split in task.splits.values() for c in split}
    assert len(conversations) == 14 and set(task.splits) == {"train", "test"}
    assert conversations["chat.jsonl:1"].messages == (Message("user", "q0"), Message("assistant", "a0"))
    assert conversations["chat.jsonl:14"].messages[0] == Message("system", "be brief")
    assert conversations["chat.jsonl:13"].as_dicts() == CHATS[2]


def test_csv_rows_and_split_files(tmp_path):
    (tmp_path / "train.csv").write_text('prompt,response,system\n"Say hi","hi",\nq,a,"You are terse."\n')
    (tmp_path / "test.csv").write_text("prompt,response\nq2,a2\n")
    task = load_task(f"file:{tmp_path / 'train.csv'},{tmp_path / 'test.csv'}", kind="sft")
    assert [c.as_dicts()[0]["role"] for c in task.splits["train"]] == ["user", "system"]
    assert task.splits["test"][0].as_dicts() == [{"role": "user", "content": "q2"},
                                                  {"role": "assistant", "content": "a2"}]


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "hello"}, r"expected \{\"prompt\": \.\.\., \"response\": \.\.\.\} or \{\"messages\".*keys \['text'\]"),
    ({"prompt": "q", "messages": CHATS[0]}, "either \"messages\" or \"prompt\"/\"response\", not both"),
    ({"prompt": "q"}, "lacks 'response'"),
    ({"prompt": "q", "response": "  "}, "\"response\": empty content"),
    ({"messages": []}, "non-empty list"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": [{"role": "user"}]}, "message 1: expected an object with \"role\" and \"content\""),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
     "message 2: unknown role 'tool'; the roles are system, user, assistant"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
     "message 1: empty content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}, "multi-part content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "a"}]}, "system message may only come first"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "starts with a user message"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "and?"}]}, "ends with a user message; it must end with the assistant"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "q", "response": "a"}] * 3 + [row])
    with pytest.raises(DataError) as err:
        _sft(path)
    assert f"{path}, line 4" in str(err.value)
    assert pytest.importorskip("re").search(message, str(err.value)), str(err.value)


def test_sft_file_refuses_column_options(tmp_path):
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "q", "response": "a"}] * 3)
    with pytest.raises(DataError, match="--text-column: an SFT file has fixed keys"):
        load_task(f"file:{path}", kind="sft", text_column="question")


# --- chat templates against transformers -----------------------------------------------------------------------

def _hf_tokenizer(tokenizer, template, **special):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=template, **special)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """SmolLM2's tokenizer and chat template, read from its GGUF as minift reads them."""
    tokenizer = load_tokenizer(smollm2_gguf)
    return tokenizer, load_chat_template(smollm2_gguf, tokenizer, special_ids(tokenizer, {"bos_token_id": 1,
                                                                                         "eos_token_id": 2}))


def test_smollm2_template_renders_as_transformers(smollm2):
    tokenizer, template = smollm2
    assert "im_start" in template.source and template.special_tokens["eos_token"] == "<|im_end|>"
    reference = _hf_tokenizer(tokenizer, template.source, bos_token="<|im_start|>", eos_token="<|im_end|>")
    for chat in CHATS:
        for generation in (False, True):
            messages = chat[:-1] if generation else chat
            assert template.render(messages, generation) == reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation)
        ids = reference.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        feature = encode_conversation(Conversation(tuple(Message(**m) for m in chat)), tokenizer, template, None)
        assert feature["input_ids"] == ids


def test_assistant_tokens_match_transformers_generation_mask(smollm2):
    """The loss mask found by rendering prefixes equals transformers' assistant mask of the same template with
    {% generation %} around each answer and its end-of-turn."""
    tokenizer, template = smollm2
    tagged = template.source.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}{% else %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}")
    assert tagged != template.source
    reference = _hf_tokenizer(tokenizer, tagged, bos_token="<|im_start|>", eos_token="<|im_end|>")
    minift_tagged = ChatTemplate(tagged, template.special_tokens)  # {% generation %} renders as its body
    for chat in CHATS:
        conversation = Conversation(tuple(Message(**m) for m in chat))
        feature = encode_conversation(conversation, tokenizer, template, None)
        assert encode_conversation(conversation, tokenizer, minift_tagged, None) == feature
        out = reference.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert out["input_ids"] == feature["input_ids"]
        assert [int(label != IGNORE_INDEX) for label in feature["labels"]] == out["assistant_masks"]
        answers = [m["content"] for m in chat if m["role"] == "assistant"]
        trained = tokenizer.decode([t for t in feature["labels"] if t != IGNORE_INDEX], skip_special_tokens=False)
        assert all(a + "<|im_end|>\n" in trained for a in answers)  # the answers and their end of turn ...
        assert trained.count("<|im_end|>") == len(answers) and "user" not in trained  # ... and nothing else


def test_whitespace_control_and_raise_exception_as_transformers(bpe_folder):
    (bpe_folder / "config.json").write_text('{"model_type": "gpt2"}')
    tokenizer = load_tokenizer(bpe_folder)
    template = ChatTemplate(LLAMA2_STYLE, {"bos_token": "<s>", "eos_token": "</s>"})
    reference = _hf_tokenizer(tokenizer, LLAMA2_STYLE, bos_token="<s>", eos_token="</s>")
    for chat in CHATS:
        assert template.render(chat) == reference.apply_chat_template(chat, tokenize=False)
    assert "<s>[INST] <<SYS>>\nAnswer in one word.\n<</SYS>>\n\nSentiment" in template.render(CHATS[1])
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="must alternate"):
        reference.apply_chat_template(bad, tokenize=False)
    with pytest.raises(DataError, match="refused the conversation: Conversation roles must alternate"):
        template.render(bad)


# --- the loss mask, the plain template, where templates come from --------------------------------------------

@pytest.fixture
def gpt2_tokenizer(bpe_folder):
    (bpe_folder / "config.json").write_text('{"model_type": "gpt2"}')
    return load_tokenizer(bpe_folder)


def test_plain_template_and_its_mask(gpt2_tokenizer):
    template = ChatTemplate(PLAIN_TEMPLATE, {"eos_token": "</s>"}, "plain")
    chat = CHATS[1]
    assert template.render(chat) == ("Answer in one word.\n\n### User:\nSentiment: profits fell.\n\n"
                                     "### Assistant:\nnegative</s>\n\n")
    assert template.render(chat[:-1], add_generation_prompt=True).endswith("### User:\nSentiment: profits fell.\n\n"
                                                                           "### Assistant:\n")
    feature = encode_conversation(Conversation(tuple(Message(**m) for m in chat)), gpt2_tokenizer, template, None)
    trained = gpt2_tokenizer.decode([t for t in feature["labels"] if t != IGNORE_INDEX], skip_special_tokens=False)
    assert trained == "negative</s>\n\n"  # the answer, the EOS that ends it; nothing of the prompt
    prompt_part = [i for i, t in zip(feature["input_ids"], feature["labels"]) if t == IGNORE_INDEX]
    assert gpt2_tokenizer.decode(prompt_part) == template.render(chat[:-1], add_generation_prompt=True)


def test_truncation_and_prompts(gpt2_tokenizer):
    template = ChatTemplate(PLAIN_TEMPLATE, {"eos_token": "</s>"})
    conversations = [Conversation(tuple(Message(**m) for m in chat), id=str(i)) for i, chat in enumerate(CHATS)]
    full = encode_sft(conversations, gpt2_tokenizer, template, None)
    cut = encode_sft(conversations, gpt2_tokenizer, template, 40)  # the second loses its answer, the others keep some
    assert all(c["input_ids"] == f["input_ids"][:40] and c["labels"] == f["labels"][:40] for c, f in zip(cut, full))
    with pytest.raises(DataError, match="cuts every conversation before the assistant's answer"):
        encode_sft(conversations, gpt2_tokenizer, template, 30)
    prompts = encode_prompts(conversations, gpt2_tokenizer, template)
    assert prompts[2]["answer"] == " 12 " and prompts[2]["prompt"].endswith("### Assistant:\n")
    assert gpt2_tokenizer.decode(prompts[0]["input_ids"]) == prompts[0]["prompt"]


def test_not_prefix_stable_template_is_refused():
    template = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="renders the start of a conversation differently.*--chat-template"):
        template.assistant_spans(CHATS[0])


def test_where_the_template_comes_from(tmp_path, gpt2_tokenizer):
    folder = tmp_path / "model"
    folder.mkdir()
    special = special_ids(gpt2_tokenizer)
    assert load_chat_template(folder, gpt2_tokenizer, special).source == PLAIN_TEMPLATE  # none: the plain one
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert load_chat_template(folder, gpt2_tokenizer, special).render(CHATS[0]) == "Hi there"
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}"}]
    config = {"chat_template": named, "bos_token": {"content": "<s>"}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_chat_template(folder, gpt2_tokenizer, special).render(CHATS[0]) == "<s>"
    (tmp_path / "mine.jinja").write_text("{{ eos_token }}")
    assert load_chat_template(folder, gpt2_tokenizer, special, str(tmp_path / "mine.jinja")).render([]) == "</s>"
    assert load_chat_template(folder, gpt2_tokenizer, special, "plain").source == PLAIN_TEMPLATE
    with pytest.raises(DataError, match="--chat-template nowhere.jinja: no such file"):
        load_chat_template(folder, gpt2_tokenizer, special, "nowhere.jinja")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(DataError, match="not valid Jinja"):
        load_chat_template(folder, gpt2_tokenizer, special)


def test_without_jinja2_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(DataError, match=r'pip install "minift\[chat\]"'):
        ChatTemplate(PLAIN_TEMPLATE)
