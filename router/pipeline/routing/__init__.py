"""Routing: what the worker decides for one claimed lane, written as a `LaneCommit`.

`route.py` is the entry (`LaneRouter`) and reads as the order of an event's steps; each step
has its module: `compliance.py` (consent and help keywords), `thread.py` (an escalation
thread's replies and buttons), `actions.py` (each rule action kind in a table), `effects.py`
(each machine effect kind in a table), `rows.py` (outbox rows, the consent gate, quiet hours),
`lane.py` (a lane's events merged into one commit); `work.py` and `contacts.py` hold what the
steps share. Everything here decides; nothing writes.
"""
