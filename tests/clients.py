"""Clients of a test gateway: the official SDKs, and the Claude Code and Codex CLIs run
offline in throwaway homes.

Each run gets its own HOME (and CODEX_HOME) so no user configuration, login or session
history is read, and an environment holding only what the CLI needs: PATH, the gateway's
base URL and a virtual key. docs/clients.md explains every setting used here.
"""
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLAUDE = shutil.which("claude")
CODEX = shutil.which("codex")

# A passing run takes seconds. Both CLIs retry failing requests with backoff (Claude Code keeps
# retrying a gateway 500 for minutes): a run that hangs must not hang the suite.
RUN_TIMEOUT_S = float(os.environ.get("CLIENTS_E2E_TIMEOUT_S", 60))


@dataclass
class CliRun:
    returncode: int | None  # None: killed after RUN_TIMEOUT_S
    stdout: str
    stderr: str


def _run(argv: list[str], env: dict, cwd: Path) -> CliRun:
    # stdin closed: `codex exec` appends piped stdin to the prompt, `claude -p` waits for it.
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as timed_out:  # the partial output says where it hung
        return CliRun(None, _text(timed_out.stdout), _text(timed_out.stderr))
    return CliRun(done.returncode, done.stdout, done.stderr)


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _isolated_env(home: Path, **extra: str) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **extra}


def run_claude(*, gateway_url: str, key: str, model: str, prompt: str, cwd: Path, home: Path,
               tools: str = "Bash", bare: bool = True) -> CliRun:
    """`claude -p` against the gateway's /v1/messages, allowed to run only `tools` ("" for
    none), unprompted.

    --bare keeps the request to the prompt alone: no CLAUDE.md, skills, hooks or the
    <system-reminder> blocks Claude Code otherwise puts before the prompt in the user turn.
    """
    env = _isolated_env(
        home,
        ANTHROPIC_BASE_URL=gateway_url,  # the SDK appends /v1/messages itself
        ANTHROPIC_API_KEY=key,  # sent as x-api-key
        ANTHROPIC_MODEL=model,
        ANTHROPIC_SMALL_FAST_MODEL=model,  # background calls (titles, summaries) use the same route
        ANTHROPIC_DEFAULT_HAIKU_MODEL=model,
        CLAUDE_CODE_MAX_CONTEXT_TOKENS="128000",  # the window of a model name Claude Code doesn't know
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY="1",
    )
    # --dangerously-skip-permissions is refused as root; allowing the tool by name works for anyone.
    argv = [CLAUDE, "-p", prompt, *(["--bare"] if bare else []), "--model", model, "--tools", tools,
            *(["--allowedTools", tools] if tools else []), "--no-session-persistence", "--output-format", "text"]
    return _run(argv, env, cwd)


CODEX_KEY_ENV = "LLM_GATEWAY_API_KEY"


def codex_config(*, gateway_url: str, model: str, websockets: bool = False) -> str:
    """config.toml for a Codex that talks only to the gateway, over the Responses API."""
    return f'''model = "{model}"
model_provider = "llm-gateway"
approval_policy = "never"
sandbox_mode = "danger-full-access"
# The hosted web_search tool means nothing to a chat upstream.
web_search = "disabled"

[model_providers.llm-gateway]
name = "LLM Gateway"
base_url = "{gateway_url}/v1"
env_key = "{CODEX_KEY_ENV}"
wire_api = "responses"
# Custom providers default to HTTP; with true Codex first tries a WebSocket on GET /v1/responses.
supports_websockets = {"true" if websockets else "false"}

[features]
# Offline: no curated-plugin sync (github.com, chatgpt.com) and no connectors.
plugins = false
apps = false
'''


def run_codex(*, gateway_url: str, key: str, model: str, prompt: str, cwd: Path, home: Path,
              websockets: bool = False) -> CliRun:
    """`codex exec` against the gateway's /v1/responses, running shell commands without asking."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(gateway_url=gateway_url, model=model,
                                                         websockets=websockets))
    env = _isolated_env(home, CODEX_HOME=str(codex_home), RUST_LOG="warn", **{CODEX_KEY_ENV: key})
    argv = [CODEX, "exec", "--skip-git-repo-check", "--sandbox", "danger-full-access", prompt]
    return _run(argv, env, cwd)


def official_sdks(gateway, secret: str) -> dict:
    """The official openai and anthropic SDK clients, pointed at `gateway` with `secret`."""
    import anthropic
    import openai

    return {"openai": openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0, timeout=20),
            "anthropic": anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0, timeout=20)}


def key_for_routes(gateway, routes: dict) -> tuple[dict[str, str], str]:
    """A new virtual key to `routes` ({label: route}) alone, so other tests' upstreams stay out of
    reach, returned once `gateway` serves each of them to it: ({label: model name}, secret).
    Needs database access."""
    from .conftest import wait_for_model
    from .factories import make_key

    _, secret = make_key(routes=list(routes.values()))
    for route in routes.values():
        wait_for_model(gateway, route.name, key=secret)
    return {label: route.name for label, route in routes.items()}, secret
