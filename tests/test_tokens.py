"""Tests for providers.tokens (plain functions, no database, no network)."""

import hashlib
import inspect
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
from tiktoken_ext import openai_public

from providers import tokens

MAIN_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_network(monkeypatch):
    """Make every way tiktoken could fetch a file fail loudly."""

    def boom(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(tiktoken.load, "read_file", boom)
    monkeypatch.setattr(socket.socket, "connect", boom)
    monkeypatch.setattr(socket, "create_connection", boom)
    try:
        import requests
    except ImportError:
        pass
    else:
        monkeypatch.setattr(requests, "get", boom)


@pytest.fixture
def fresh_cache(monkeypatch):
    """Forget every loaded encoding, in tiktoken and in providers.tokens."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tokens, "_encodings", {})


# --- shipped files ---------------------------------------------------------


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_shipped_file_matches_tiktoken(name):
    filename, sha256 = tokens.SHIPPED[name]
    source = inspect.getsource(getattr(openai_public, name))
    url = re.search(r'"(https://[^"]+\.tiktoken)"', source).group(1)
    expected = re.search(r'expected_hash="([0-9a-f]{64})"', source).group(1)
    assert filename == hashlib.sha1(url.encode()).hexdigest()
    assert sha256 == expected
    data = (tokens.TOKENIZERS_DIR / filename).read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected


def test_module_does_not_import_django():
    code = "import sys, providers.tokens; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=MAIN_DIR, check=True)


# --- loading offline -------------------------------------------------------


@pytest.mark.parametrize("model,name", [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")])
def test_loads_without_network(no_network, fresh_cache, monkeypatch, tmp_path, model, name):
    # Even with the user pointing tiktoken elsewhere, the shipped folder is used.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    enc = tokens.encoding_for(model)
    assert enc.name == name
    assert enc.encode_ordinary("hello world") in ([24912, 2375], [15339, 1917])
    assert list(tmp_path.iterdir()) == []


def test_encodings_are_cached(fresh_cache):
    assert tokens.encoding_for("gpt-4o") is tokens.encoding_for("claude-3-5-sonnet")
    assert tokens.encoding_for("gpt-4") is tokens.encoding_for("gpt-3.5-turbo")


def test_corrupt_shipped_file_is_not_deleted_or_downloaded(no_network, fresh_cache, monkeypatch, tmp_path):
    filename, _ = tokens.SHIPPED["o200k_base"]
    (tmp_path / filename).write_bytes(b"not a bpe file")
    monkeypatch.setattr(tokens, "TOKENIZERS_DIR", tmp_path)
    monkeypatch.setattr(tokens, "_fallback_warned", False)
    with pytest.raises(RuntimeError, match="sha256"):
        tokens.encoding_for("gpt-4o")
    assert (tmp_path / filename).read_bytes() == b"not a bpe file"
    # Counting degrades to a chars/4 estimate instead of raising.
    assert tokens.count_text_tokens("x" * 10, "gpt-4o") == 3


def test_missing_shipped_file(no_network, fresh_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(tokens, "TOKENIZERS_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="missing"):
        tokens.encoding_for("gpt-4")
    assert tokens.count_completion_tokens("abcd" * 5, "gpt-4") == 5


# --- model -> encoding -----------------------------------------------------


@pytest.mark.parametrize(
    "model,name",
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:org::abc", "o200k_base"),
        ("claude-3-5-sonnet-20241022", "o200k_base"),
        ("gemini-1.5-pro", "o200k_base"),
        ("", "o200k_base"),
        (None, "o200k_base"),
        (42, "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("GPT-4-turbo", "cl100k_base"),
        ("gpt-4-32k-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("azure/gpt-35-turbo", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:org::x", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
    ],
)
def test_encoding_for(model, name):
    assert tokens.encoding_for(model).name == name


# --- known counts ----------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_hello_world_is_two_tokens(model):
    assert tokens.count_text_tokens("hello world", model) == 2


def test_known_token_ids():
    assert tokens.encoding_for("gpt-4o").encode_ordinary("hello world") == [24912, 2375]
    assert tokens.encoding_for("gpt-4").encode_ordinary("hello world") == [15339, 1917]
    assert tokens.encoding_for("gpt-4").encode_ordinary("Hello, world!") == [9906, 11, 1917, 0]


def test_known_counts():
    fox = "The quick brown fox jumps over the lazy dog."
    assert tokens.count_text_tokens(fox, "gpt-4o") == 10
    assert tokens.count_text_tokens(fox, "gpt-4") == 10
    assert tokens.count_text_tokens("Hello, world!", "gpt-4o") == 4
    assert tokens.count_completion_tokens("hello world", "gpt-4o") == 2


def test_special_token_text_is_plain_text():
    # Client text containing "<|endoftext|>" must not raise (tiktoken.encode would).
    assert tokens.count_text_tokens("<|endoftext|>", "gpt-4o") == 7
    assert tokens.count_text_tokens("<|endoftext|>", "gpt-4") == 7


# --- messages --------------------------------------------------------------


def test_messages_text():
    msgs = [{"role": "user", "content": "hello world"}]
    # 3 per message + "user" (1) + "hello world" (2) + 3 reply priming
    assert tokens.count_message_tokens(msgs, "gpt-4o") == 9
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello world"},
    ]
    # (3 + 1 + 6) + (3 + 1 + 2) + 3
    assert tokens.count_message_tokens(msgs, "gpt-4") == 19


def test_messages_name_adds_one():
    base = [{"role": "user", "content": "hello world"}]
    named = [{"role": "user", "content": "hello world", "name": "bob"}]
    extra = tokens.count_text_tokens("bob", "gpt-4o") + 1
    assert tokens.count_message_tokens(named, "gpt-4o") == tokens.count_message_tokens(base, "gpt-4o") + extra


def test_messages_content_parts():
    text_only = [{"role": "user", "content": "hello world"}]
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10000}},
            ],
        }
    ]
    base = tokens.count_message_tokens(text_only, "gpt-4o")
    assert tokens.count_message_tokens(parts, "gpt-4o") == base + tokens.IMAGE_PART_TOKENS
    two_texts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]}]
    assert tokens.count_message_tokens(two_texts, "gpt-4o") == base


def test_messages_tool_calls_and_none_content():
    tool_calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    msgs = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    without_tools = [msgs[0], {"role": "assistant", "content": None}, msgs[2]]
    with_count = tokens.count_message_tokens(msgs, "gpt-4o")
    without_count = tokens.count_message_tokens(without_tools, "gpt-4o")
    assert with_count > without_count + 10  # the tool call JSON is counted
    assert tokens.count_message_tokens([{"role": "assistant", "content": None}], "gpt-4o") == 3 + 1 + 3


def test_empty_messages():
    assert tokens.count_message_tokens([], "gpt-4o") == 3


# --- request bodies --------------------------------------------------------


def test_prompt_tokens_chat():
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
    assert tokens.count_prompt_tokens(body, "gpt-4o") == 9


def test_prompt_tokens_chat_with_tools():
    msgs = [{"role": "user", "content": "hello world"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert tokens.count_prompt_tokens({"messages": msgs, "tools": tools}, "gpt-4o") > 9


def test_prompt_tokens_completions():
    assert tokens.count_prompt_tokens({"prompt": "hello world"}, "gpt-3.5-turbo-instruct") == 2
    assert tokens.count_prompt_tokens({"prompt": ["hello world", "hello"]}, "gpt-4") == 3
    assert tokens.count_prompt_tokens({"prompt": [1, 2, 3]}, "gpt-4") == 3


def test_prompt_tokens_embeddings():
    model = "text-embedding-3-small"
    assert tokens.count_prompt_tokens({"input": "hello world"}, model) == 2
    assert tokens.count_prompt_tokens({"input": ["hello world", "hello world"]}, model) == 4
    assert tokens.count_prompt_tokens({"input": [15339, 1917, 0]}, model) == 3
    assert tokens.count_prompt_tokens({"input": [[1, 2], [3, 4, 5]]}, model) == 5


def test_prompt_tokens_unknown_shapes():
    assert tokens.count_prompt_tokens({}, "gpt-4o") == 0
    assert tokens.count_prompt_tokens({"model": "gpt-4o", "foo": "bar"}, "gpt-4o") == 0


# --- robustness on client data --------------------------------------------

ODD_VALUES = [
    None,
    0,
    1.5,
    True,
    "",
    "x",
    b"bytes",
    [],
    {},
    [None],
    [1, "a", None, [2, None], {"k": "v"}],
    {"role": 1, "content": 2},
    {"nested": {"deep": [1, 2, {"x": object()}]}},
    "\ud800 lone surrogate",
    "<|endoftext|><|endofprompt|>",
    float("nan"),
    object(),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", None, 123, ["gpt-4"]])
def test_never_raises(value, model):
    for result in (
        tokens.count_text_tokens(value, model),
        tokens.count_completion_tokens(value, model),
        tokens.count_message_tokens(value, model),
        tokens.count_message_tokens([value], model),
        tokens.count_message_tokens([{"role": "user", "content": value}], model),
        tokens.count_message_tokens([{"role": "user", "content": [value]}], model),
        tokens.count_message_tokens([{"role": "assistant", "tool_calls": value}], model),
        tokens.count_prompt_tokens(value, model),
        tokens.count_prompt_tokens({"messages": value}, model),
        tokens.count_prompt_tokens({"prompt": value}, model),
        tokens.count_prompt_tokens({"input": value}, model),
        tokens.count_prompt_tokens({"input": [value]}, model),
        tokens.count_prompt_tokens({"messages": [], "tools": value}, model),
    ):
        assert isinstance(result, int) and result >= 0


def test_non_string_text_counts_zero():
    assert tokens.count_text_tokens(None, "gpt-4o") == 0
    assert tokens.count_text_tokens(123, "gpt-4o") == 0
    assert tokens.count_completion_tokens(None, "gpt-4o") == 0


def test_deeply_nested_tool_calls_do_not_raise():
    deep = []
    for _ in range(5000):
        deep = [deep]
    msgs = [{"role": "assistant", "tool_calls": deep}]
    assert tokens.count_message_tokens(msgs, "gpt-4o") >= 0
