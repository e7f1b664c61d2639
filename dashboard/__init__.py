"""``fedmq dashboard``: an operator's web view of the store and the broker, and Prometheus metrics.

Needs the ``dashboard`` extra (Starlette, uvicorn, prometheus_client); nothing here is imported by
the aggregator or the silos. server.py starts it, app.py serves it, queries.py reads the store,
live.py watches the broker, metrics.py renders /metrics, static/ holds the pages.
"""
