-- Delayed confirmation: an alert of a feature set with `-- delay: N ticks`
-- is raised once N later ticks of its symbol arrived; the alert records N,
-- so that detected_at - ts reads as the wait it was.
ALTER TABLE alerts ADD COLUMN delay_ticks integer NOT NULL DEFAULT 0 CHECK (delay_ticks >= 0);
