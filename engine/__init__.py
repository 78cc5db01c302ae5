"""Curate engine: ingest, catalog, encoders, embeddings, analyses, export and the CLI."""

__version__ = "0.1.0"
