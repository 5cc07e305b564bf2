"""Test cases for this provider (to be filled in with the official signing code)."""

from __future__ import annotations

from tests.cases.base import ProviderCase

CASES: list[ProviderCase] = []
