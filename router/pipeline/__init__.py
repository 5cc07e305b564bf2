"""The processing pipeline: ingest (request path), then the worker that routes stored events."""
