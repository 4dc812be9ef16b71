"""Keep the garbage collector's full passes off the request path of a web process.

A web process holds some 120,000 long-lived objects after start-up (Django, the URL conf and every view,
phone-number metadata); a request that builds a 100-row page allocates enough to trigger a full
collection now and then, which walked all of them: 50-500 ms added to an unlucky request on a busy
machine (``bench/bench_views.py``: the queue's 100-row page had a p50 of 60-120 ms and a p95 of 200-500
ms, every slow one with a full collection). Loading what the first request would load and then freezing
the heap (``gc.freeze``, Python 3.7+) leaves the collector only the objects requests create.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Import every view (what the first request would do), collect once, then freeze what is left."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018  (resolving the URL conf imports every view module)
    gc.collect()
    gc.freeze()
