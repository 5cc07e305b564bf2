-- The doubt window of a row (issue 17): when the first attempt whose outcome is not recorded
-- started. A message may have left from then on, so the look before any resend (SPEC §8)
-- searches the provider from there, however many claims, looks and crashes came after; only
-- an outcome that settles the row closes it (sent; or a provider's answer that nothing went
-- out, to an attempt no earlier one was in doubt for). `attempt_started_at` was overwritten
-- by every claim, so a look made after a second crash started too late and sent again.
--
-- `attempt_started_at` stays for the processes of the previous version that run until the
-- roll-out ends (migrate first, then roll out); nothing reads it any more.
ALTER TABLE outbox ADD COLUMN doubt_since TEXT;
UPDATE outbox SET doubt_since = attempt_started_at WHERE status = 'sending';
