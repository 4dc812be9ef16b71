"""Settings for the test suite and type checking: the development defaults, fast password hashing.

``DATABASE_URL`` still chooses the database, so the same suite runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os

os.environ.setdefault("DEBUG", "1")

from dedup.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests run background tasks inline unless a test starts a real worker.
Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
