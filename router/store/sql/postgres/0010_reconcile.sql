-- Reconciliation (SPEC §12): per source, the last pass that succeeded (its `until`: the next
-- pass asks the provider from there, less an overlap), what passes recovered in all, and the
-- error of the last pass when it failed (cleared by the next success). `switchboard status`
-- reads it (Store.reconcile_state). One pass at a time for the fleet: a session advisory
-- lock held by the passing process (released if it dies), no table needed.
CREATE TABLE reconcile_state (
    source          text PRIMARY KEY,
    last_success    timestamptz,
    recovered       bigint NOT NULL DEFAULT 0,
    last_error      text,
    last_error_at   timestamptz
);
