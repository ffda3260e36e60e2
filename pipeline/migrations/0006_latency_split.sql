-- Detection latency split: arrival to final (what the feature pack declares:
-- the delayed confirmation, the market bucket close) and final to
-- committed (processing), so a slow detector and a long declared wait are
-- told apart on the dashboard.
ALTER TABLE detector_stats
    ADD COLUMN processing_p50_ms double precision,
    ADD COLUMN processing_p99_ms double precision,
    ADD COLUMN wait_p50_ms double precision,
    ADD COLUMN wait_p99_ms double precision;
