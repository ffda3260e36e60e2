-- Offsets are fenced by the Kafka consumer group's generation: a member
-- that was evicted (it stopped polling during an outage) and commits late
-- cannot move the offsets a member of a newer generation stored. NULL: a
-- writer that does not fence (stored before this migration, or a tool).
ALTER TABLE detector_offsets ADD COLUMN generation integer;
