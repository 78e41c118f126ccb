"""Mock upstream: a real HTTP server speaking each provider's wire format, with per-request fault injection.

Fault options come from a ``"mock"`` object in the JSON body and/or the ``x-mock-fault`` header
(a JSON object; header keys win). Durations are in seconds (floats allowed).

Answer faults (no generation is produced):
  status: int            answer this status. 4xx/5xx get OpenAI's error body for that status
                         (401 invalid_api_key and 403 unsupported_country_region_territory are
                         OpenAI's real bodies; 429 rate_limit_exceeded; 5xx/529 server_error).
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
  event_bytes: int       pad every stream content event to this many bytes on the wire (with
                         chunks: a stream of N events of a given size, e.g. 1024 x 4096 = 4 MB).
  no_usage: bool         leave usage out.
  usage_every_chunk: bool  every stream chunk carries a (cumulative) usage object.
  error_null: bool       every stream chunk carries "error": null (OpenRouter does this).
  malformed: true|"truncated"|"not_json"   a 200 non-stream answer whose body is cut JSON
                         (default) or not JSON at all.
  malformed_at: int      the n-th stream content event is not valid JSON.

Stream cuts:
  chunks_then_drop: int  after N content events the connection is closed (no [DONE]).
  drop_mid_event: bool   with chunks_then_drop, first send half of the next event.
  stall_after: int       after N content events the stream goes silent (until the client leaves).

Counting:
  request_id: str        (or the x-mock-request-id header) counts generations per id (every
                         authenticated request with that id, failed ones included):
                         MockUpstream.generations(id), or GET /mock/generations/{id} (no auth).
"""

from .server import MockUpstream, MockUpstreamThread, build_app, serve, start

__all__ = ["MockUpstream", "MockUpstreamThread", "build_app", "serve", "start"]
