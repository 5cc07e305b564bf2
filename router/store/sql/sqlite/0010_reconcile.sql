-- Reconciliation (SPEC §12): per source, the last pass that succeeded (its `until`: the next
-- pass asks the provider from there, less an overlap), what passes recovered in all, and the
-- error of the last pass when it failed (cleared by the next success). `switchboard status`
-- reads it (Store.reconcile_state).
CREATE TABLE reconcile_state (
    source          TEXT PRIMARY KEY,
    last_success    TEXT,
    recovered       INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_error_at   TEXT
) WITHOUT ROWID;
