"""Mock upstream: a real HTTP server speaking each provider's wire format, with per-request fault injection.

Endpoints (modules): OpenAI chat/completions, completions, embeddings, models (openai_chat);
Anthropic /v1/messages, /v1/messages/count_tokens, /v1/models with anthropic-version (anthropic);
OpenAI Responses /v1/responses (POST, GET /{id}, /compact, WebSocket upgrade on GET) (responses);
Gemini /v1beta/models/{model}:generateContent|streamGenerateContent|countTokens, /v1beta/models (gemini).
Each answers auth failures, bad input and injected faults in its own error shape. What the mock
answers (text, tool calls, thinking) is decided in `conversation`, the same way for every format.

Options come from, later ones winning: ``<mock>{...}</mock>`` anywhere in the prompt text (so they
survive a gateway translating between formats), a ``"mock"`` object in the JSON body, and the
``x-mock-fault`` header (a JSON object). Durations are in seconds (floats allowed).

Behaviour (every format):
  tool_calls: int        when tools are offered and the last message is the user's, answer with this
                         many parallel calls (default 1; 0 answers with text). tool_choice none -> text.
                         A last message of tool results is answered with text quoting the results.
  reasoning: bool        think first (also: Anthropic thinking enabled, Responses reasoning.effort,
                         Gemini includeThoughts, a chat model named *reasoner*), with a signature /
                         encrypted_content / thoughtSignature that the mock can verify.
  require_signature: bool  answer 400 (in the format's words) when a tool turn comes back without
                         its signed thinking (chat: without reasoning_content) or with a forged one.
  cached_tokens: int     report this many cached prompt tokens; cache_creation_tokens (Anthropic) too.

Answer faults (no generation is produced):
  status: int            answer this status. 4xx/5xx get the format's error body for that status
                         (OpenAI: 401 invalid_api_key and 403 unsupported_country_region_territory
                         are the real bodies, 429 rate_limit_exceeded, 5xx/529 server_error;
                         Anthropic: 529 overloaded_error, 429 rate_limit_error, ...; Gemini: 429
                         RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...).
                         3xx answers a redirect with a Location header (see location).
  message, error_type, code   override the error body's fields.
  body, content_type     send this raw body instead (e.g. an HTML 502 page).
  retry_after: number|str     Retry-After header (seconds, or any string such as an HTTP date).
  retry_after_ms: number      retry-after-ms header (what the OpenAI SDKs read first).
  location: str          Location of a 3xx answer (default: the same path on this server).
  redirect: str          shorthand for {"status": 302, "location": <redirect>}.
  fail_times: int        apply status/redirect only to the first N generations of request_id
                         (e.g. {"status": 529, "fail_times": 2, "request_id": "r1"}: fail twice, then answer).

Timing:
  delay / first_byte_delay: seconds before anything, headers included, is sent.
  first_event_delay:     headers at once, then wait before the first event (stream) or the body.
  chunk_delay:           seconds between stream events.
  keepalive_every, keepalive_for: before the first event, send an SSE comment line every
                         keepalive_every seconds for keepalive_for seconds ("thinking" keep-alives).
  keepalive_comment:     its text (default "OPENROUTER PROCESSING", sent as ": OPENROUTER PROCESSING").

Answer shape:
  chunks: int            exactly this many content words / stream content events.
  (chat and legacy completions only, the next three:)
  event_bytes: int       pad every stream content event to this many bytes on the wire (with
                         chunks: a stream of N events of a given size, e.g. 1024 x 4096 = 4 MB).
  no_usage: bool         leave usage out.
  usage_every_chunk: bool  every stream chunk carries a (cumulative) usage object.
  error_null: bool       every stream chunk carries "error": null (OpenRouter does this).
  malformed: true|"truncated"|"not_json"   a 200 non-stream answer whose body is cut JSON
                         (default) or not JSON at all.
  malformed_at: int      the n-th stream content event is not valid JSON (keeping its event: name).

Stream cuts:
  chunks_then_drop: int  after N content events the connection is closed (no [DONE]).
  drop_mid_event: bool   with chunks_then_drop, first send half of the next event.
  stall_after: int       after N content events the stream goes silent (until the client leaves).
  error_after: int       after N content events the stream ends with the format's error event
                         (error_status, default 500: OpenAI {"error":...}, Anthropic `event: error`,
                         Responses `error`, Gemini {"error":{code,status}}).

WebSocket (Responses): each response.create frame is one turn; statuses and bad input answer an
error frame {"type":"error","status":...,"error":{...}} and keep the connection; chunks_then_drop
closes the socket without a close frame; error_after, chunk_delay, first_event_delay apply.

Counting:
  request_id: str        (or the x-mock-request-id header) counts generations per id (every
                         authenticated request with that id, failed ones included):
                         MockUpstream.generations(id), or GET /mock/generations/{id} (no auth).

Recorded requests (MockUpstream.requests) keep method, path, query, headers, json, plus the
credential received (api_key) and how it came (auth_scheme); credentials in headers and ?key=
are recorded as "[redacted]".
"""

from .server import MockUpstream, MockUpstreamThread, build_app, serve, start

__all__ = ["MockUpstream", "MockUpstreamThread", "build_app", "serve", "start"]
