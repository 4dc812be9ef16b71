"""The dashboard's views, one module per area. Every object is fetched through ``dedup.access``."""
