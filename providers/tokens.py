"""Offline token counting with tiktoken, using the BPE files shipped in providers/tokenizers/."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken  # imported when a count first needs it: processes that never count don't load it

log = logging.getLogger(__name__)

TOKENIZERS_DIR = Path(__file__).resolve().parent / "tokenizers"

# tiktoken's file cache (tiktoken.load.read_file_cached) looks for
# $TIKTOKEN_CACHE_DIR/<sha1 of the blob URL> and, if the file's sha256 matches,
# never touches the network. Point it at the shipped folder before any encoding
# is loaded; _load() re-asserts this in case something changed it since.
os.environ["TIKTOKEN_CACHE_DIR"] = str(TOKENIZERS_DIR)

# encoding name -> (cache-key filename, expected sha256 from tiktoken_ext/openai_public.py)
SHIPPED = {
    "o200k_base": (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
DEFAULT_ENCODING = "o200k_base"

# OpenAI chat accounting (see the openai-cookbook "How to count tokens" notebook).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
IMAGE_PART_TOKENS = 85  # low-detail image; a fixed estimate

_TEXT_PART_TYPES = {"text", "input_text", "output_text"}
_IMAGE_PART_TYPES = {"image_url", "image", "input_image"}

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}
_fallback_warned = False


def _load(name: str) -> tiktoken.Encoding:
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    with _lock:
        enc = _encodings.get(name)
        if enc is not None:
            return enc
        filename, sha256 = SHIPPED[name]
        path = TOKENIZERS_DIR / filename
        # Check the file ourselves: on a miss or hash mismatch tiktoken would
        # delete the cached file and try to download it.
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"shipped tiktoken file for {name} missing: {path}") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(f"shipped tiktoken file for {name} has the wrong sha256: {path}")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(TOKENIZERS_DIR)
        import tiktoken

        enc = tiktoken.get_encoding(name)
        _encodings[name] = enc
        return enc


def _encoding_name(model) -> str:
    if not isinstance(model, str):
        return DEFAULT_ENCODING
    m = model.strip().lower()
    if m.startswith("ft:"):  # ft:gpt-4o-mini-2024-07-18:org::id
        m = m[3:]
    m = m.rsplit("/", 1)[-1]  # openai/gpt-4, azure/gpt-35-turbo
    if m.startswith(("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5")):
        return "o200k_base"
    if m.startswith(("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-", "davinci-002", "babbage-002")):
        return "cl100k_base"
    # o1 / o3 / o4 / gpt-5 families, and an estimate for everything else
    # (Claude, Gemini, Llama, ...).
    return DEFAULT_ENCODING


def encoding_for(model: str) -> tiktoken.Encoding:
    """Return the (cached) tiktoken encoding used to count tokens for `model`."""
    return _load(_encoding_name(model))


def _count(text, enc) -> int:
    if not isinstance(text, str) or not text:
        return 0
    if enc is None:
        return math.ceil(len(text) / 4)
    return len(enc.encode_ordinary(text))  # special tokens in client text count as plain text


def _enc_or_none(model):
    global _fallback_warned
    try:
        return encoding_for(model)
    except Exception:
        if not _fallback_warned:
            _fallback_warned = True
            log.exception("tiktoken encoding unavailable; estimating tokens as chars/4")
        return None


def _json(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except Exception:
        return ""


def _content_tokens(content, enc) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _count(content, enc)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += _count(part, enc)
            elif isinstance(part, dict):
                ptype = part.get("type")
                if ptype in _IMAGE_PART_TYPES:
                    total += IMAGE_PART_TOKENS
                elif ptype in _TEXT_PART_TYPES or isinstance(part.get("text"), str):
                    total += _count(part.get("text"), enc)
                elif ptype == "refusal":
                    total += _count(part.get("refusal"), enc)
                # other parts (audio, files, ...) are not estimated
        return total
    if isinstance(content, dict):
        return _content_tokens([content], enc)
    return 0


def _messages_tokens(messages, enc) -> int:
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            if key == "content":
                total += _content_tokens(value, enc)
            elif isinstance(value, str):
                total += _count(value, enc)
                if key == "name":
                    total += TOKENS_PER_NAME
            elif isinstance(value, (dict, list)):  # tool_calls, function_call, ...
                total += _count(_json(value), enc)
    return total + REPLY_PRIMING_TOKENS


def _input_tokens(value, enc) -> int:
    """Tokens in a `prompt` / `input`: str, list of str, token array, or list of token arrays."""
    if isinstance(value, str):
        return _count(value, enc)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += _count(item, enc)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += 1
        elif isinstance(item, list):
            total += sum(1 for t in item if isinstance(t, int) and not isinstance(t, bool))
    return total


def count_text_tokens(text: str, model: str) -> int:
    """Tokens in a plain string (0 for non-strings)."""
    try:
        if not isinstance(text, str) or not text:
            return 0
        return _count(text, _enc_or_none(model))
    except Exception:
        log.exception("token counting failed")
        return 0


def count_message_tokens(messages: list, model: str) -> int:
    """Prompt tokens for a chat `messages` list, following OpenAI's chat accounting."""
    try:
        if not isinstance(messages, list):
            return 0
        return _messages_tokens(messages, _enc_or_none(model))
    except Exception:
        log.exception("token counting failed")
        return 0


def count_prompt_tokens(body: dict, model: str) -> int:
    """Prompt tokens for a chat, legacy completions or embeddings request body (0 if unknown)."""
    try:
        if not isinstance(body, dict):
            return 0
        if "messages" in body:
            if not isinstance(body["messages"], list):
                return 0
            enc = _enc_or_none(model)
            total = _messages_tokens(body["messages"], enc)
            for key in ("tools", "functions"):  # definitions are billed as prompt tokens
                if isinstance(body.get(key), list) and body[key]:
                    total += _count(_json(body[key]), enc)
            return total
        if "prompt" in body:
            return _input_tokens(body["prompt"], _enc_or_none(model))
        if "input" in body:
            return _input_tokens(body["input"], _enc_or_none(model))
        return 0
    except Exception:
        log.exception("token counting failed")
        return 0


def count_completion_tokens(text: str, model: str) -> int:
    """Tokens in generated completion text (0 for non-strings)."""
    return count_text_tokens(text, model)
