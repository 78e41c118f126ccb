"""Benchmark: a translated stream (Anthropic client, OpenAI-compatible upstream) against the
same-protocol streams of the same gateway, at concurrency 1 and 32.

    .venv/bin/python bench/translate.py                       # 10 s per cell, once
    .venv/bin/python bench/translate.py --repeat 3 --duration 6
    .venv/bin/python bench/translate.py --scenarios chat-openai,messages-openai

Scenarios (every one a stream of 20 content events from the mock, all written at once):

- `chat-openai`        same protocol: POST /v1/chat/completions, OpenAI-compatible upstream
- `messages-openai`    translated:    POST /v1/messages, the same OpenAI-compatible upstream
- `messages-anthropic` same protocol: POST /v1/messages, an Anthropic-type upstream (the mock's
                       own /v1/messages)

It reuses bench/run.py's stack (embedded Redis, the mock in its own process, one gateway
Daphne process on a fresh SQLite; the reference relay is started too but not measured) and
bench/loadgen.py. Reported per cell: req/s, p50, time to first token (the first event with
non-empty text) and the gateway's CPU per request; then the issue's targets: translated ÷
same-protocol req/s at c=32 (≥ 70 %) and translated − same-protocol TTFT p50 at c=1
(≤ 1 ms), each the median of comparisons made within one repetition (back to back).
See docs/performance.md ("Translated streams").
"""
import argparse
import sys

import run as bench  # bench/run.py: this script runs from bench/, like loadgen.py

CHUNKS = 20
# The mock's options ride in the prompt text, the one place that survives translation; every
# scenario sends the same prompt, so the mock writes the same reply in each format.
PROMPT = 'Say hello to the benchmark, briefly. <mock>{"chunks": %d, "chunk_delay": 0}</mock>'
ANTHROPIC_MODEL = "claude-bench"

# An Anthropic-type provider on the mock's own /v1/messages, for the same-protocol Messages baseline.
EXTRA_SETUP = """
ap = Provider.objects.create(name="mock-anthropic", type="anthropic", base_url={base_url!r})
ak = ProviderKey(provider=ap, label="a"); ak.set_secret("sk-x"); ak.save()
CatalogEntry.objects.create(provider=ap, model_id=%r, input_price_per_m="3", output_price_per_m="15")
ar = Route.objects.create(name=%r)
RouteTarget.objects.create(route=ar, provider=ap, upstream_model=%r)
""" % (ANTHROPIC_MODEL, ANTHROPIC_MODEL, ANTHROPIC_MODEL)

TARGETS = {"translated_ratio": 0.70, "translated_added_ttft_ms": 1.0}
BASELINE = "chat-openai"
TRANSLATED = "messages-openai"


def chat_body(chunks: int) -> dict:
    # include_usage: the gateway always asks the upstream for usage, so the mock sends the
    # same events on the same-protocol and the translated path.
    return {"model": bench.MODEL, "messages": [{"role": "user", "content": PROMPT % chunks}], "stream": True,
            "stream_options": {"include_usage": True}}


def messages_body(model: str, chunks: int) -> dict:
    return {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": PROMPT % chunks}],
            "stream": True}


def scenarios(port: int, chunks: int) -> dict:
    """name -> what the load generator sends: url, headers, body, and how a stream ends."""
    base = f"http://{bench.HOST}:{port}"
    anthropic_headers = {"x-api-key": bench.VIRTUAL_KEY, "anthropic-version": "2023-06-01"}
    return {
        "chat-openai": {"kind": "same protocol", "url": f"{base}/v1/chat/completions",
                        "headers": {"Authorization": f"Bearer {bench.VIRTUAL_KEY}"},
                        "body": chat_body(chunks), "end": "[DONE]"},
        "messages-openai": {"kind": "translated", "url": f"{base}/v1/messages", "headers": anthropic_headers,
                            "body": messages_body(bench.MODEL, chunks), "end": "message_stop"},
        "messages-anthropic": {"kind": "same protocol", "url": f"{base}/v1/messages", "headers": anthropic_headers,
                               "body": messages_body(ANTHROPIC_MODEL, chunks), "end": "message_stop"},
    }


def check_answers(name: str, spec: dict) -> None:
    """One request of each scenario before measuring: a 200 whose stream ends properly."""
    status, content = bench.post(spec["url"], spec["body"], spec["headers"], timeout=10)
    if status != 200 or spec["end"].encode() not in content[-64:]:
        raise RuntimeError(f"{name}: HTTP {status}, {content[-300:]!r}")


def run_cells(procs, stack, args) -> list[dict]:
    specs = scenarios(stack.gw_port, args.chunks)
    for name in args.scenarios:
        check_answers(name, specs[name])
    samples = []
    for rep in range(args.repeat):
        for concurrency in args.concurrency:
            for name in args.scenarios:  # back to back, so that they see the same machine state
                spec = specs[name]
                result = bench.run_load(procs, stack, name, [spec["body"]], concurrency, args.duration, args.warmup,
                                        args.client, url=spec["url"], headers=spec["headers"], server="gateway",
                                        stream_end=spec["end"])
                samples.append({"rep": rep, "scenario": name, "concurrency": concurrency, **result})
                if not args.json:
                    print(f"  [{rep + 1}/{args.repeat}] {name:18} c={concurrency:<3} {result['rps']:8.1f} req/s  "
                          f"TTFT p50 {result['ttft_p50_ms']} ms  CPU {result['cpu_ms_per_req']} ms/req  "
                          f"errors {result['errors']}", file=sys.stderr, flush=True)
    return samples


def summarise(samples: list[dict], args) -> dict:
    """Per-cell medians, and the targets as medians of same-repetition comparisons."""
    cells = []
    for concurrency in args.concurrency:
        for name in args.scenarios:
            mine = [s for s in samples if (s["scenario"], s["concurrency"]) == (name, concurrency)]
            cells.append({"scenario": name, "concurrency": concurrency,
                          **{k: bench.median([s[k] for s in mine]) for k in bench.METRICS},
                          "rps_each": [s["rps"] for s in mine], "errors": sum(s["errors"] for s in mine),
                          "error_samples": [e for s in mine for e in s["error_samples"]][:5]})
    low, high = min(args.concurrency), max(args.concurrency)

    def per_rep(a, b, concurrency, key, combine):
        values = []
        for rep in range(args.repeat):
            x = next((s for s in samples if (s["rep"], s["scenario"], s["concurrency"]) == (rep, a, concurrency)), None)
            y = next((s for s in samples if (s["rep"], s["scenario"], s["concurrency"]) == (rep, b, concurrency)), None)
            if x and y and x[key] is not None and y[key]:
                values.append(round(combine(x[key], y[key]), 3))
        return values

    comparisons = {}
    for other in args.scenarios:
        if other == BASELINE:
            continue
        ratio = per_rep(other, BASELINE, high, "rps", lambda a, b: a / b)
        cpu = per_rep(BASELINE, other, high, "cpu_ms_per_req", lambda a, b: a / b)  # baseline CPU / other CPU
        ttft = per_rep(other, BASELINE, low, "ttft_p50_ms", lambda a, b: a - b)
        comparisons[other] = {"ratio_each": ratio, "ratio": bench.median(ratio), "cpu_ratio": bench.median(cpu),
                              "added_ttft_each_ms": ttft, "added_ttft_ms": bench.median(ttft)}
    verdicts = {}
    if TRANSLATED in comparisons:
        t = comparisons[TRANSLATED]
        verdicts["ratio"] = bench._verdict(t["ratio"], TARGETS["translated_ratio"], below=False)
        verdicts["added_ttft"] = bench._verdict(t["added_ttft_ms"], TARGETS["translated_added_ttft_ms"], below=True)
    return {"cells": cells, "comparisons": comparisons, "targets": verdicts}


def print_report(report: dict) -> None:
    f = bench._fmt
    args = report["args"]
    print(f"# Translated-stream bench — {report['started']}")
    print(f"command: {report['command']}")
    print(f"gateway revision: {report['revision']}")
    print(f"machine: {report['machine']}")
    print(f"{args['duration']} s per cell after {args['warmup']} s warm-up, {args['repeat']} repetition(s), "
          f"{args['chunks']} content events per stream, all written at once; medians, every req/s in brackets")
    print("\n| scenario | c | req/s | p50 ms | TTFT p50 ms | TTFT p99 ms | errors | gateway CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in report["summary"]["cells"]:
        each = f" ({', '.join(f'{x:.0f}' for x in c['rps_each'])})" if len(c["rps_each"]) > 1 else ""
        print(f"| {c['scenario']} | {c['concurrency']} | {f(c['rps'])}{each} | {f(c['p50_ms'], 2)} | "
              f"{f(c['ttft_p50_ms'], 2)} | {f(c['ttft_p99_ms'], 2)} | {c['errors']} | {f(c['cpu_ms_per_req'], 3)} |")
    print()
    for name, comp in report["summary"]["comparisons"].items():
        each = ", ".join(f"{x:.0%}" for x in comp["ratio_each"])
        ratio = "–" if comp["ratio"] is None else f"{comp['ratio']:.0%}"
        cpu = "–" if comp["cpu_ratio"] is None else f"{comp['cpu_ratio']:.0%}"
        ttft = ", ".join(f"{x:+.2f}" for x in comp["added_ttft_each_ms"])
        print(f"- {name} ÷ {BASELINE} req/s at c={max(args['concurrency'])}: {ratio} (each: {each}); "
              f"by CPU per request: {cpu}")
        print(f"- {name} − {BASELINE} TTFT p50 at c={min(args['concurrency'])}: "
              f"{f(comp['added_ttft_ms'], 2)} ms (each: {ttft})")
    verdicts = report["summary"]["targets"]
    if verdicts:
        print(f"- targets (issue #8 item 7): ratio ≥ {TARGETS['translated_ratio']:.0%}: {verdicts['ratio']}; "
              f"added TTFT ≤ {TARGETS['translated_added_ttft_ms']} ms: {verdicts['added_ttft']}")
    errors = [e for c in report["summary"]["cells"] for e in c["error_samples"]]
    if errors:
        print(f"- error samples: {errors[:3]}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="run every cell this many times (default 1)")
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32],
                        help="comma-separated (default 1,32)")
    parser.add_argument("--scenarios", type=lambda v: v.split(","),
                        default=["chat-openai", "messages-openai", "messages-anthropic"],
                        help="comma-separated subset of chat-openai,messages-openai,messages-anthropic")
    parser.add_argument("--chunks", type=int, default=CHUNKS, help=f"content events per stream (default {CHUNKS})")
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp",
                        help="the gateway's upstream transport (default aiohttp)")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="load generator HTTP client")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with server logs")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - {"chat-openai", "messages-openai", "messages-anthropic"}
    if unknown:
        parser.error(f"unknown --scenarios: {', '.join(sorted(unknown))}")
    if BASELINE not in args.scenarios:
        parser.error(f"--scenarios must include the baseline {BASELINE}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def run(procs, workdir, report):
        stack = bench.Stack(procs, workdir, extra_setup=EXTRA_SETUP)
        stack.start_shared()
        if not args.json:
            print("starting the gateway", file=sys.stderr, flush=True)
        stack.start_servers(args.transport)
        report["samples"] = run_cells(procs, stack, args)
        report["summary"] = summarise(report["samples"], args)
        report["gateway_memory"] = bench.rss_mb(stack.gateway.pid)
        stack.stop_servers()

    return bench.run_bench("xbench", args, run, print_report, "summary", keep_logs=args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
