"""Runs Backend.AI 23.9.10's own AgentRegistry.recalc_resource_usage() against a database and a Redis.

Usage (with the virtualenv's python, see `scripts/backendai-schema python`):

    recalc_parity.py --db postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME --redis redis://[:PASSWORD@]HOST:PORT/0
                     [--fullscan | --as-intended]

--as-intended runs 23.9.10's code as it means to run: with its one concurrency bug fixed (it tests a session's
status against the *kernel* status set, which never matches, so as shipped it counts no concurrency at all), the
session-status set being put where the kernel-status set was, then once more as a full scan, so that keys of access
keys without occupying sessions are set to 0 too (the non-full-scan pass leaves them as they were).

It builds the pieces the method touches the way the manager does, and nothing else:
  * self.db         -- the manager's engine, from ai.backend.manager.models.utils.connect_database() given a
                       local-config mapping with only the "db" section (isolation level SERIALIZABLE, as the
                       manager's server uses);
  * self.redis_stat -- a RedisConnectionInfo from ai.backend.common.redis_helper.get_redis_object(), given the
                       shared-config "redis" section as the manager validates it from etcd (config/redis/addr,
                       config/redis/password), on the URL's database number (the manager's REDIS_STAT_DB is 0).
The AgentRegistry is made with __new__, without __init__ (which wants etcd, RPC keys, event buses, ...).

Prints one JSON object on stdout: {"elapsed_s": <seconds spent in the recalc_resource_usage() call only>}.
Exits non-zero (with the traceback on stderr) when the call fails, and after --timeout seconds (default 120) when it
has not finished (23.9.10's redis_helper.execute() retries an unreachable Redis forever, logging a warning each time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import unquote, urlsplit


def parse_db_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise SystemExit(f"--db: not a postgresql:// URL: {url}")
    if not parts.hostname or not parts.path.strip("/"):
        raise SystemExit(f"--db: the URL needs a host and a database name: {url}")
    return {
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
        "addr": f"{parts.hostname}:{parts.port or 5432}",
        "name": unquote(parts.path.lstrip("/")),
        # the manager's defaults for these (ai/backend/manager/config.py)
        "pool-size": 8,
        "pool-recycle": -1,
        "max-overflow": 64,
    }


def parse_redis_url(url: str) -> tuple[dict, int | None]:
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise SystemExit(f"--redis: not a redis:// URL: {url}")
    if not parts.hostname:
        raise SystemExit(f"--redis: the URL needs a host: {url}")
    # The same keys as etcd's config/redis/... (addr is "host:port"; no scheme).
    raw = {"addr": f"{parts.hostname}:{parts.port or 6379}"}
    if parts.password:
        raw["password"] = unquote(parts.password)
    db_part = parts.path.strip("/")
    return raw, (int(db_part) if db_part else None)


async def run(db_url: str, redis_url: str, fullscan: bool, intended: bool, timeout: float) -> float:
    from ai.backend.common import redis_helper
    from ai.backend.common.config import redis_config_iv
    from ai.backend.common.defs import REDIS_STAT_DB
    from ai.backend.manager.models.utils import connect_database
    from ai.backend.manager.registry import AgentRegistry

    local_config = {"db": parse_db_url(db_url)}
    raw_redis, redis_db = parse_redis_url(redis_url)
    redis_config = redis_config_iv.check(raw_redis)
    redis_stat = redis_helper.get_redis_object(
        redis_config,
        name="stat",
        db=REDIS_STAT_DB if redis_db is None else redis_db,
    )
    try:
        async with connect_database(local_config) as db:
            registry = AgentRegistry.__new__(AgentRegistry)
            registry.db = db
            registry.redis_stat = redis_stat
            if intended:
                import ai.backend.manager.registry as registry_module
                from ai.backend.manager.models.session import USER_RESOURCE_OCCUPYING_SESSION_STATUSES

                registry_module.USER_RESOURCE_OCCUPYING_KERNEL_STATUSES = USER_RESOURCE_OCCUPYING_SESSION_STATUSES
            started = time.perf_counter()
            # redis_helper.execute() retries a refused connection forever: bound the call.
            await asyncio.wait_for(registry.recalc_resource_usage(do_fullscan=fullscan), timeout)
            if intended:
                await asyncio.wait_for(registry.recalc_resource_usage(do_fullscan=True), timeout)
            return time.perf_counter() - started
    finally:
        await redis_stat.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME")
    parser.add_argument("--redis", required=True, help="redis://[:PASSWORD@]HOST:PORT/DB")
    parser.add_argument(
        "--fullscan",
        action="store_true",
        help="call recalc_resource_usage(do_fullscan=True) (every caller in 23.9.10 uses the default, False)",
    )
    parser.add_argument(
        "--as-intended",
        action="store_true",
        help="fix 23.9.10's concurrency bug for this run and follow with a full scan (see above)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up (exit 1) when the call takes longer than this many seconds (default 120)",
    )
    args = parser.parse_args()
    try:
        elapsed = asyncio.run(run(args.db, args.redis, args.fullscan, args.as_intended, args.timeout))
    except asyncio.TimeoutError:
        raise SystemExit(f"recalc_parity: recalc_resource_usage() did not finish within {args.timeout} s")
    json.dump({"elapsed_s": elapsed}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
