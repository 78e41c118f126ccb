"""Closed-loop HTTP load generator for the bench: N keep-alive connections, each sending the next
request as soon as the previous answer is complete, for a fixed time. Prints one JSON object.

The default client speaks HTTP/1.1 on raw asyncio sockets (a Protocol per connection, a
small incremental parser): on a 2-core machine the load generator shares the CPU with the
servers it measures, and this client needs about 40 % less CPU per request than an aiohttp
ClientSession (see docs/performance.md). `--client aiohttp` is there to cross-check.

    python bench/loadgen.py --url http://127.0.0.1:8001/v1/chat/completions \
        --body '{"model": "m", "messages": [...]}' --concurrency 32 --duration 10

Time to first token is when the first SSE event with non-empty `content` (or `text`) arrives.
A stream counts as complete when its last 64 bytes hold `--stream-end` (default `[DONE]`,
OpenAI chat's end; `message_stop` for Anthropic Messages).
"""
import argparse
import asyncio
import json
import re
import sys
import time
from urllib.parse import urlsplit

# The first event carrying text: `"content":"<not a quote>` (the role-only first chunk has "content":"").
FIRST_TOKEN = re.compile(rb'"(?:content|text)": ?"[^"]')
REQUEST_TIMEOUT_S = 30.0
MAX_ERROR_SAMPLES = 5


class Stats:
    """Samples of the requests that finished inside the measured window."""

    def __init__(self, measure_from: float, measure_to: float, interval: float | None):
        self.measure_from = measure_from
        self.measure_to = measure_to
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.interval = interval
        self.buckets: dict[int, int] = {}
        self.sent = 0  # every answered request, warm-up and stragglers included

    def add(self, started: float, finished: float, first_token: float | None, error: str | None):
        self.sent += 1
        if started < self.measure_from or finished > self.measure_to:
            return
        if error is not None:
            self.errors += 1
            if len(self.error_samples) < MAX_ERROR_SAMPLES:
                self.error_samples.append(error)
            return
        self.latencies.append(finished - started)
        if first_token is not None:
            self.ttfts.append(first_token - started)
        if self.interval:
            bucket = int((finished - self.measure_from) // self.interval)
            self.buckets[bucket] = self.buckets.get(bucket, 0) + 1


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return round(ordered[rank] * 1000, 3)


# ---------------------------------------------------------------- raw HTTP/1.1 client


class ResponseError(Exception):
    pass


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with an incremental response parser."""

    def __init__(self):
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()
        self._reset(None)

    def _reset(self, done):
        self.done = done  # future set when the current response is complete
        self.buffer = bytearray()
        self.headers_done = False
        self.status = 0
        self.length = None  # content-length, or None for chunked / until close
        self.chunked = False
        self.keep_alive = True
        self.body = bytearray()
        self.chunk_left = 0  # bytes left in the current chunk (chunked only)
        self.first_token = None
        self.scan_from = 0
        self.watch_tokens = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(None)
        if self.done is not None and not self.done.done():
            if self.headers_done and self.length is None and not self.chunked:
                self.done.set_result(None)  # body delimited by close
            else:
                self.done.set_exception(ResponseError(f"connection lost: {exc!r}"))

    def request(self, payload: bytes, watch_tokens: bool) -> asyncio.Future:
        self._reset(asyncio.get_running_loop().create_future())
        self.watch_tokens = watch_tokens
        self.transport.write(payload)
        return self.done

    def data_received(self, data):
        if self.done is None or self.done.done():
            return  # unsolicited bytes; ignored
        self.buffer += data
        try:
            self._parse()
        except ResponseError as exc:
            self.done.set_exception(exc)
            self.transport.close()

    def _parse(self):
        if not self.headers_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            parts = head[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise ResponseError(f"bad status line {head[0]!r}")
            self.status = int(parts[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                if name == "content-length":
                    self.length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
                elif name == "connection" and value.lower() == "close":
                    self.keep_alive = False
            if parts[0] == "HTTP/1.0":
                self.keep_alive = False
            self.headers_done = True
        if self.chunked:
            self._parse_chunked()
        else:
            self._take(self.buffer)
            self.buffer = bytearray()
            if self.length is not None and len(self.body) >= self.length:
                self.done.set_result(None)

    def _parse_chunked(self):
        buf = self.buffer
        pos = 0
        while True:
            if self.chunk_left > 0:
                take = min(self.chunk_left, len(buf) - pos)
                if take <= 0:
                    break
                self._take(buf[pos:pos + take])
                pos += take
                self.chunk_left -= take
                if self.chunk_left:
                    break
                self.chunk_left = -2  # expect the CRLF that closes the chunk
            if self.chunk_left == -2:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            if size == 0:
                # Last chunk: no trailers expected from these servers, just the final CRLF.
                if len(buf) - line_end < 4:
                    break
                pos = line_end + 4
                self.buffer = bytearray(buf[pos:])
                self.done.set_result(None)
                return
            pos = line_end + 2
            self.chunk_left = size
        self.buffer = bytearray(buf[pos:])

    def _take(self, data):
        self.body += data
        if self.watch_tokens and self.first_token is None:
            if FIRST_TOKEN.search(self.body, self.scan_from):
                self.first_token = time.perf_counter()
            else:
                self.scan_from = max(0, len(self.body) - 16)


class RawClient:
    def __init__(self, url: str, headers: dict[str, str], stream_end: bytes = b"[DONE]"):
        self.stream_end = stream_end
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise SystemExit("loadgen: only http:// URLs")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.headers = headers

    def payload(self, body: bytes) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def connect(self) -> RawConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(RawConnection, self.host, self.port)
        return conn

    async def worker(self, index: int, bodies, stats: Stats, stop_at: float):
        conn = None
        n = index
        try:
            while time.perf_counter() < stop_at:
                payload, is_stream = bodies[n % len(bodies)]
                n += 1
                if conn is None or conn.transport.is_closing():
                    conn = await self.connect()
                started = time.perf_counter()
                error = None
                try:
                    await asyncio.wait_for(conn.request(payload, is_stream), REQUEST_TIMEOUT_S)
                    body = conn.body
                    if conn.status != 200:
                        error = f"HTTP {conn.status}: {bytes(body[:200])!r}"
                    elif is_stream and self.stream_end not in body[-64:]:
                        error = f"stream without {self.stream_end.decode()}: {bytes(body[-200:])!r}"
                    elif is_stream and conn.first_token is None:
                        error = "stream without a content event"
                except (ResponseError, OSError, asyncio.TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    conn.transport.close()
                    conn = None
                finished = time.perf_counter()
                stats.add(started, finished, conn.first_token if conn and is_stream else None, error)
                if conn is not None and not conn.keep_alive:
                    conn.transport.close()
                    conn = None
        finally:
            if conn is not None:
                conn.transport.close()


# ---------------------------------------------------------------- aiohttp client (cross-check)


class AiohttpClient:
    def __init__(self, url: str, headers: dict[str, str], stream_end: bytes = b"[DONE]"):
        self.stream_end = stream_end
        self.url = url
        self.headers = {"Content-Type": "application/json", **headers}
        self.session = None

    def payload(self, body: bytes) -> bytes:
        return body

    async def open(self, concurrency: int):
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            auto_decompress=False,
        )

    async def close(self):
        await self.session.close()

    async def worker(self, index: int, bodies, stats: Stats, stop_at: float):
        import aiohttp

        n = index
        while time.perf_counter() < stop_at:
            payload, is_stream = bodies[n % len(bodies)]
            n += 1
            started = time.perf_counter()
            first_token = None
            error = None
            try:
                async with self.session.post(self.url, data=payload, headers=self.headers) as resp:
                    body = bytearray()
                    async for chunk in resp.content.iter_any():
                        scan_from = max(0, len(body) - 16)
                        body += chunk
                        if is_stream and first_token is None and FIRST_TOKEN.search(body, scan_from):
                            first_token = time.perf_counter()
                    if resp.status != 200:
                        error = f"HTTP {resp.status}: {bytes(body[:200])!r}"
                    elif is_stream and self.stream_end not in body[-64:]:
                        error = f"stream without {self.stream_end.decode()}"
                    elif is_stream and first_token is None:
                        error = "stream without a content event"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            stats.add(started, time.perf_counter(), first_token, error)


# ---------------------------------------------------------------- main


async def run(args) -> dict:
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    client = (RawClient if args.client == "raw" else AiohttpClient)(args.url, headers, args.stream_end.encode())
    bodies = []
    for text in args.body:
        parsed = json.loads(text)
        bodies.append((client.payload(json.dumps(parsed).encode()), parsed.get("stream") is True))
    if isinstance(client, AiohttpClient):
        await client.open(args.concurrency)
    now = time.perf_counter()
    cpu_start = time.process_time()
    measure_from = now + args.warmup
    stop_at = measure_from + args.duration
    stats = Stats(measure_from, stop_at, args.interval)
    tasks = [asyncio.create_task(client.worker(i, bodies, stats, stop_at)) for i in range(args.concurrency)]
    try:
        # Workers stop issuing at stop_at; give in-flight requests the request timeout to finish.
        done, pending = await asyncio.wait(tasks, timeout=args.warmup + args.duration + REQUEST_TIMEOUT_S + 5)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                stats.errors += 1
                if len(stats.error_samples) < MAX_ERROR_SAMPLES:
                    stats.error_samples.append(f"worker died: {task.exception()!r}")
    finally:
        if isinstance(client, AiohttpClient):
            await client.close()
    ok = len(stats.latencies)
    wall = time.perf_counter() - now
    result = {
        "requests": ok,
        "sent": stats.sent,
        "loadgen_cpu_pct": round(100 * (time.process_time() - cpu_start) / wall),
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "duration_s": args.duration,
        "rps": round(ok / args.duration, 1),
        "mean_ms": round(1000 * sum(stats.latencies) / ok, 3) if ok else None,
        "p50_ms": percentile(stats.latencies, 50),
        "p90_ms": percentile(stats.latencies, 90),
        "p99_ms": percentile(stats.latencies, 99),
        "ttft_p50_ms": percentile(stats.ttfts, 50),
        "ttft_p99_ms": percentile(stats.ttfts, 99),
    }
    if args.interval:
        count = int(args.duration // args.interval)
        result["interval_rps"] = [round(stats.buckets.get(i, 0) / args.interval, 1) for i in range(count)]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", action="append", required=True,
                        help="JSON request body; repeat to alternate between several bodies")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--interval", type=float, default=None, help="also report req/s per interval")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    parser.add_argument("--stream-end", default="[DONE]",
                        help="what the last 64 bytes of a complete stream hold (message_stop for Anthropic)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
