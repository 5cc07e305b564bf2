"""Machine definitions as data: each module gives `STATES` and `TRANSITIONS` for `transitions`."""
