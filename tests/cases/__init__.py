"""Every provider endpoint's test case; the contract suite runs each test over all of them."""

from __future__ import annotations

from tests.cases import custom, email, slack, stripe, twilio
from tests.cases.base import ProviderCase, SignedRequest

ALL_CASES: list[ProviderCase] = [
    *twilio.CASES,
    *slack.CASES,
    *stripe.CASES,
    *email.CASES,
    *custom.CASES,
]

__all__ = ["ALL_CASES", "ProviderCase", "SignedRequest"]
