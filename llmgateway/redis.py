"""Redis clients (one synchronous, one asyncio per event loop, both from settings.REDIS_URL),
and how every command run from the project folder finds the embedded Redis of `./run.sh`."""
import json
import logging
import os
import socket
import time
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from django.conf import settings

log = logging.getLogger(__name__)

# Fail fast: a Redis outage must not stall a request or the admin.
_TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}

# Written by `manage.py serve` beside the embedded Redis's data, read by settings.py.
EMBEDDED_REDIS_FILE = "redis/embedded.json"


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, **_TIMEOUTS)


def new_async_client() -> aioredis.Redis:
    # A pool large enough for any burst: redis-py's default of 100 raised "Too many
    # connections" under 1000 concurrent requests, which the limits took for an outage.
    # (Rather than a blocking pool: a burst opens connections instead of queueing requests.)
    return aioredis.Redis.from_url(
        settings.REDIS_URL, max_connections=getattr(settings, "GATEWAY_REDIS_MAX_CONNECTIONS", 10_000), **_TIMEOUTS)


def async_client() -> aioredis.Redis:
    """The running loop's async client (asyncio connections belong to the loop that made
    them: see llmgateway/runtime.py)."""
    from .runtime import current

    return current().redis


def record_embedded_redis(data_dir: Path, url: str, pid: int) -> Path:
    """Tell later commands (another terminal's `./run.sh shell`, `gateway_config`) where
    the embedded Redis of this `serve` listens."""
    path = Path(data_dir) / EMBEDDED_REDIS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": pid, "serve_pid": os.getpid()}))
    os.replace(tmp, path)  # readers never see half a file
    return path


def forget_embedded_redis(data_dir: Path, pid: int) -> None:
    """Remove the record, if it is still ours (a later `serve` may have replaced it)."""
    path = Path(data_dir) / EMBEDDED_REDIS_FILE
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def embedded_redis_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis a running `serve` recorded in data_dir, or None when
    there is no record or it is stale (its server is gone: a crash, a reboot)."""
    try:
        record = json.loads((Path(data_dir) / EMBEDDED_REDIS_FILE).read_text())
        url, pid = record["url"], int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    # The pid may have been reused after a reboot: the port must answer too.
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 6379), timeout=0.5).close()
    except OSError:
        return None
    return url


def redacted_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


_last_unreachable_warning = 0.0
# Once per outage, not once per call: one `gateway_config apply` bumps the config version
# once per saved object.
UNREACHABLE_WARNING_EVERY_S = 60.0


def warn_unreachable(exc: BaseException, consequence: str) -> None:
    """Log that Redis cannot be reached and what to do about it, at most once a minute."""
    global _last_unreachable_warning
    now = time.monotonic()
    if _last_unreachable_warning and now - _last_unreachable_warning < UNREACHABLE_WARNING_EVERY_S:
        return
    _last_unreachable_warning = now
    url = redacted_url(settings.REDIS_URL)
    if os.environ.get("REDIS_URL"):
        advice = "check that REDIS_URL points to a running Redis"
    else:
        advice = (f"REDIS_URL is unset and no gateway started with ./run.sh is running from "
                  f"DATA_DIR={settings.DATA_DIR}: start it (it starts its own Redis), "
                  f"or set REDIS_URL")
    log.warning("cannot reach Redis at %s (%s): %s; %s", url, type(exc).__name__, advice, consequence)


class ScriptCall:
    """One Lua script call, prepared: sent alone or with others in ONE round trip (run_scripts)."""

    __slots__ = ("script", "keys", "args")

    def __init__(self, script, keys, args):
        self.script = script  # a redis AsyncScript (its sha is known without a client)
        self.keys = keys
        self.args = args


async def run_scripts(client, calls: list[ScriptCall]) -> list:
    """The replies of several script calls, sent in ONE round trip: their EVALSHA commands
    written together on one pooled connection, then their replies read (each script is
    atomic on its own; together they are not a transaction). Leaner than a redis-py
    pipeline, which costs about as much client CPU as a second round trip. A script Redis
    does not know yet (a restarted Redis) is loaded and its call sent again. Raises
    RedisError when Redis is unreachable, and the error of a script that failed."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # a Redis that is down fails here, once
    try:
        replies = await _send_scripts(pool, connection, calls)
    except redis.exceptions.ConnectionError:
        # A pooled connection to a Redis that restarted before this event loop noticed it
        # close: the pool hands it out, the call fails, and a request would pass its limits
        # uncounted. Drop the idle connections and send once more on a new one (as redis-py
        # retries its own commands).
        await pool.disconnect(inuse_connections=False)
        replies = await _send_scripts(pool, await pool.get_connection(), calls)
    for i, (call, reply) in enumerate(zip(calls, replies)):
        if isinstance(reply, redis.exceptions.NoScriptError):
            replies[i] = await call.script(keys=call.keys, args=call.args, client=client)  # loads it
        elif isinstance(reply, Exception):
            raise reply
    return replies


async def _send_scripts(pool, connection, calls: list[ScriptCall]) -> list:
    """The calls' EVALSHA commands written together on `connection`, then their replies (a
    failed script's as its error); the connection goes back to the pool."""
    try:
        await connection.send_packed_command(connection.pack_commands(
            [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in calls]))
        replies = []
        for _ in calls:
            try:
                replies.append(await connection.read_response())
            except redis.exceptions.ResponseError as exc:  # read on: the others' replies follow
                replies.append(exc)
    except BaseException:
        await connection.disconnect()  # replies may still be in flight: never reuse it
        raise
    finally:
        await pool.release(connection)
    return replies
