"""Exit 0 when PostgreSQL answers at the given URL's host, 1 otherwise (used by ``make test``)."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import psycopg


def main(url: str) -> int:
    parts = urlsplit(url)
    try:
        with psycopg.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=parts.username or "postgres",
            dbname="postgres",
            connect_timeout=3,
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        print(f"PostgreSQL unreachable at {parts.hostname}:{parts.port or 5432}: {exc}".strip())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
