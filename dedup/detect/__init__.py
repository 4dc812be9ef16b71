"""Detection's parts, by job: reading the index (``reading``), scoring groups into cluster rows
(``proposals``), writing the cluster tables (``writing``), the raw SQL they share (``sql``), and what the
tables say about clusters and members for exports, merges and previews (``records``).

``dedup.detection`` is the public entry point and runs them in order.
"""
