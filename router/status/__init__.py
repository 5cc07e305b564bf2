"""`switchboard status` and `GET /api/status` (SPEC §12): one object that says how the box is
doing, and `alerts`, what needs a person.

- `model`: the object, as typed Structs.
- `read`: reads it from the store (every count through an index) and the server's readiness.
- `sections`: what other parts of the product keep (reconciliation, backups), one function each.
- `alerts`: the rules that turn the object into sentences for a person.
"""
