"""Redis clients: one synchronous, one asyncio per event loop, both from settings.REDIS_URL."""
from functools import cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

# Fail fast: a Redis outage must not stall a request or the admin.
_TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, **_TIMEOUTS)


def new_async_client() -> aioredis.Redis:
    # A blocking pool: under a burst, a request waits (up to the socket timeout) for one of
    # the pool's connections instead of failing with "Too many connections", which the
    # limits would take for an outage and serve uncounted.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=getattr(settings, "GATEWAY_REDIS_MAX_CONNECTIONS", 100),
        timeout=_TIMEOUTS["socket_timeout"], **_TIMEOUTS)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def async_client() -> aioredis.Redis:
    """The running loop's async client (asyncio connections belong to the loop that made
    them: see llmgateway/runtime.py)."""
    from .runtime import current

    return current().redis


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
    connection = await pool.get_connection()
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
    for i, (call, reply) in enumerate(zip(calls, replies)):
        if isinstance(reply, redis.exceptions.NoScriptError):
            replies[i] = await call.script(keys=call.keys, args=call.args, client=client)  # loads it
        elif isinstance(reply, Exception):
            raise reply
    return replies
