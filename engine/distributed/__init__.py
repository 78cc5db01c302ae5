"""Running Curate on a Ray cluster (or a local Ray instance): embedding, sharded search and partitioned analyses.

Modules
-------
cluster    connect to a cluster (or start a local instance) and read its resources
embed      ``curate embed --ray``: Ray Data ``map_batches`` over an actor pool of encoders, shards written by the
           driver exactly as the local pipeline writes them
synthetic  deterministic, encoder-free vectors keyed by sample id (benchmarks and tests at 10^7 rows)

Ray is an optional dependency (``pip install 'curate[scale]'``); nothing here imports it at module import time.
"""
