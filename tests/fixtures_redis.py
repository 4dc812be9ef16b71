"""The ``redis_url`` fixture: a Redis database of this project's own, for the tests that need Redis.

``TEST_REDIS_URL`` names it (default ``redis://127.0.0.1:6379/15``). When Redis cannot be reached the
test is skipped, unless ``REQUIRE_REDIS=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os

import pytest

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"REQUIRE_REDIS=1 and Redis is unreachable at {url}: {exc}")
        pytest.skip(f"needs Redis at {url} (set TEST_REDIS_URL; `.ci/run` starts one): {exc}")
    return url
