"""Detection's parts, by job: reading the index (``reading``), scoring groups into cluster rows
(``proposals``), writing the cluster tables (``writing``), and the raw SQL both ends share (``sql``).

``dedup.detection`` is the public entry point and runs them in order.
"""
