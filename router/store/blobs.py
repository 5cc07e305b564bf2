"""Content-addressed files for large payloads: each distinct content is stored once."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path


class BlobStore:
    """Files named by the sha256 of their content under `root/ab/abcdef...`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, content: bytes) -> str:
        """Store `content` durably (fsync file and folder) and return its sha256 hex.

        Blocking: call it in a thread. Writing an existing digest again is a no-op.
        """
        digest = hashlib.sha256(content).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unique per call: two requests carrying the same attachment write it concurrently.
        temp = target.with_name(f".{digest}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        with open(temp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return digest

    def get(self, digest: str) -> bytes:
        """The content stored under `digest`; raises FileNotFoundError if absent."""
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise FileNotFoundError(digest)
        return self.path(digest).read_bytes()
