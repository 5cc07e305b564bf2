"""Errors the core raises; driver errors are mapped to these in one place per backend."""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base of every error Switchboard raises on purpose."""


class StoreUnavailable(SwitchboardError):
    """The store cannot commit right now (locked, disk full, gone); the caller answers 503."""


class StoreCorrupt(SwitchboardError):
    """The store holds data this version cannot read (schema newer than the code)."""


class UnstorableEvent(StoreUnavailable):
    """An adapter built an event the store cannot encode (a parser bug, e.g. a lone surrogate).

    The ingest path quarantines the request and answers 400; no other request of the same
    commit batch fails with it. A subclass of StoreUnavailable so that a caller that knows only
    that error still refuses to acknowledge rather than crash.
    """
