"""Opaque reasoning is sealed with the provider format and the upstream model that made it,
and only ever goes back to that model (providers/wire/seals.py)."""
import json

import pytest

from providers import hub
from providers.wire.relays import ObservingRelay
from providers.wire.seals import seal, seal_native, sealed_thinking, unseal, unseal_native
from providers.wire.translate import translate_answer, translate_request


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "qwen3:8b", "claude-3-5-sonnet@20240620", "a/b c"])
def test_a_seal_gives_back_the_value_format_and_model_it_was_made_with(model):
    sealed = seal("ErUBCkYI+/=", "gemini", "anthropic_messages", model=model)
    assert unseal(sealed, "anthropic_messages") == ("ErUBCkYI+/=", "gemini", model, None)


def test_a_responses_seal_keeps_its_reasoning_item_id():
    sealed = seal("gAAAAB", "openai_responses", "anthropic_messages", "rs_42", "gpt-5")
    assert unseal(sealed, "anthropic_messages") == ("gAAAAB", "openai_responses", "gpt-5", "rs_42")


def test_seals_made_before_models_were_recorded_are_still_read():
    assert unseal("gemini:c2ln", "anthropic_messages") == ("c2ln", "gemini", None, None)
    assert unseal("openai_responses:rs_1:gAAA", "gemini") == ("gAAA", "openai_responses", None, "rs_1")


def test_a_value_the_gateway_did_not_seal_belongs_to_the_clients_own_format():
    assert unseal("ErUBCkYI", "anthropic_messages") == ("ErUBCkYI", "anthropic_messages", None, None)
    assert seal("ErUBCkYI", None, "anthropic_messages") == "ErUBCkYI"


def test_unsigned_reasoning_sealed_with_its_origin_is_read_as_unsigned():
    thinking = sealed_thinking("hmm", seal("", "openai_chat", "anthropic_messages", model="deepseek-r1"),
                               "anthropic_messages")
    assert (thinking.signature, thinking.origin, thinking.source_model) == ("", "openai_chat", "deepseek-r1")


ANTHROPIC_ANSWER = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "thinking", "thinking": "Let me see.", "signature": "ErUBCkYI"},
                {"type": "redacted_thinking", "data": "EmwKAhgB"},
                {"type": "tool_use", "id": "toolu_1", "name": "sign", "input": {"type": "thinking", "signature": "mine"}}],
    "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4},
}


def test_a_native_answer_has_only_its_opaque_reasoning_sealed():
    payload = json.loads(json.dumps(ANTHROPIC_ANSWER))
    assert seal_native(payload, "anthropic_messages", "claude-sonnet-4-5")
    thinking, redacted, tool_use = payload["content"]
    assert thinking["signature"] == "anthropic_messages@claude-sonnet-4-5:ErUBCkYI"
    assert redacted["data"] == "anthropic_messages@claude-sonnet-4-5:EmwKAhgB"
    assert tool_use == ANTHROPIC_ANSWER["content"][2]  # a tool's input is the model's text, not a seal
    assert {k: v for k, v in payload.items() if k != "content"} == {
        k: v for k, v in ANTHROPIC_ANSWER.items() if k != "content"}


def test_a_native_request_gets_its_own_models_seals_back_bare_and_the_clients_body_is_left_alone():
    body = {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "anthropic_messages@claude-opus:ErUB"},
            {"type": "tool_use", "id": "toolu_1", "name": "x", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]}
    before = json.dumps(body)
    out = unseal_native(body, "anthropic_messages")
    assert out["messages"][1]["content"][0]["signature"] == "ErUB"
    assert out["messages"][0] is body["messages"][0]  # turns without a seal are not copied
    assert json.dumps(body) == before


def test_a_native_stream_seals_signature_deltas_and_passes_everything_else_as_received():
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":3,"output_tokens":0}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":'
        b'{"type":"thinking","thinking":"","signature":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
        b'{"type":"thinking_delta","thinking":"Hm."}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
        b'{"type":"signature_delta","signature":"ErUBCkYI"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":5}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    relay = ObservingRelay("anthropic_messages", sealed_by="claude-sonnet-4-5")
    out = b"".join(relay.feed(events[i:i + 37]) for i in range(0, len(events), 37)) + relay.close()
    assert out == events.replace(b'"signature":"ErUBCkYI"', b'"signature":"anthropic_messages@claude-sonnet-4-5:ErUBCkYI"')
    assert relay.finished and relay.usage.output_tokens == 5


def test_a_native_responses_stream_seals_encrypted_reasoning_in_items_and_the_completed_response():
    item = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB"}
    added = {"type": "response.output_item.added", "output_index": 0,
             "item": {"type": "reasoning", "id": "rs_1", "summary": []}}
    events = (
        b'event: response.output_item.added\ndata: ' + json.dumps(added).encode() + b'\n\n'
        b'event: response.output_item.done\ndata: '
        + json.dumps({"type": "response.output_item.done", "output_index": 0, "item": item}).encode() + b'\n\n'
        + b'event: response.completed\ndata: '
        + json.dumps({"type": "response.completed", "response": {"id": "resp_1", "status": "completed",
                                                                   "output": [item], "usage": None}}).encode() + b'\n\n'
    )
    relay = ObservingRelay("openai_responses", sealed_by="gpt-5")
    out = relay.feed(events)
    assert out.count(b'"encrypted_content":"openai_responses@gpt-5:rs_1:gAAAAB"') == 2


def test_a_translated_answer_seals_reasoning_with_the_model_the_gateway_asked_for():
    gemini = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "plan", "thought": True, "thoughtSignature": "c2ln"}, {"text": "Done."}]},
        "finishReason": "STOP"}], "modelVersion": "gemini-2.5-pro-preview-06-05"}
    out = translate_answer(gemini, "gemini", "anthropic_messages", "alias", sealed_by="gemini-2.5-pro")
    assert out["content"][0]["signature"] == "gemini@gemini-2.5-pro:c2ln"


@pytest.mark.parametrize("upstream, field", [("anthropic_messages", "thinking"), ("gemini", "thought")])
def test_signed_reasoning_goes_back_only_to_the_model_that_made_it(upstream, field):
    signature = seal("c2ln", upstream, "openai_responses", model="model-a")
    body = {"model": "alias", "input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}],
         "encrypted_content": signature},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}

    same, kept = translate_request(body, "openai_responses", upstream, "model-a")
    other, dropped = translate_request(body, "openai_responses", upstream, "model-b")

    assert "c2ln" in json.dumps(same) and not kept
    assert "c2ln" not in json.dumps(other)
    assert any("model-a is not valid for model-b" in reason for _, reason in dropped)
    assert any(field in where for where, _ in dropped)


def test_an_anthropic_request_drops_another_models_thinking_and_stops_thinking_for_that_turn():
    body = {"model": "alias", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t", "signature": "anthropic_messages@claude-opus:ErUB"},
                    {"type": "tool_use", "id": "toolu_1", "name": "x", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]}
    out, dropped = translate_request(body, "anthropic_messages", "anthropic_messages", "claude-sonnet")
    assert [b["type"] for b in out["messages"][1]["content"]] == ["tool_use"]
    assert "thinking" not in out  # Anthropic refuses a thinking request continuing an unsigned tool turn
    assert {where for where, _ in dropped} >= {"messages.1.thinking", "reasoning"}


def test_a_hub_thinking_keeps_the_model_its_seal_names():
    part = hub.Thinking(text="x", signature="ErUB", origin="anthropic_messages", source_model="claude-opus")
    sealed = seal(part.signature, part.origin, "openai_responses", model=part.source_model)
    again = sealed_thinking("x", sealed, "openai_responses")
    assert (again.signature, again.origin, again.source_model) == ("ErUB", "anthropic_messages", "claude-opus")
