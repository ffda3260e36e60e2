-- StockAnomaly's first schema: models, alerts, dead letters, the detector's
-- Kafka offsets and statistics, and the ticks table partitioned by day.
-- Applied once, in one transaction, by `stockanomaly db migrate`; never edit
-- it after release (the checksum is checked): add 0002_*.sql instead.

CREATE TABLE models (
    version  text PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('model', 'rule')),
    manifest jsonb NOT NULL,
    created  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    model_version    text NOT NULL,
    detector         text NOT NULL CHECK (detector IN ('model', 'rule')),
    symbol           text NOT NULL,
    ts               timestamptz NOT NULL,
    seq              integer NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    score            double precision NOT NULL,
    threshold        double precision NOT NULL,
    reason           text,
    top_features     jsonb,
    features         jsonb,
    evidence_start   timestamptz,
    evidence_end     timestamptz,
    source           text NOT NULL,
    source_partition integer,
    source_offset    bigint,
    -- One alert per model and tick: a replayed batch inserts nothing new.
    UNIQUE (model_version, symbol, ts, seq)
);
CREATE INDEX alerts_ts_idx ON alerts (ts);
CREATE INDEX alerts_symbol_ts_idx ON alerts (symbol, ts);

-- Messages the detector could not use. NULLs are distinct in the unique key,
-- so letters without a partition/offset are never deduplicated.
CREATE TABLE dead_letters (
    id               bigserial PRIMARY KEY,
    received         timestamptz NOT NULL DEFAULT now(),
    source           text NOT NULL,
    source_partition integer,
    source_offset    bigint,
    payload          bytea,
    reason           text NOT NULL,
    detail           text,
    UNIQUE (source, source_partition, source_offset)
);

-- next_offset: the first offset not yet fully processed (alerts committed).
-- warmup_offset: the earliest offset whose tick is still needed as history
-- by the features, where a restarted detector starts reading.
CREATE TABLE detector_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    warmup_offset  bigint NOT NULL,
    updated        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE detector_stats (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    instance       text NOT NULL,
    consumer_group text,
    ticks          bigint NOT NULL,
    ticks_per_s    double precision,
    batches        bigint NOT NULL,
    alerts         bigint NOT NULL,
    dead_letters   bigint NOT NULL,
    lag            bigint,
    batch_p50_ms   double precision,
    batch_p99_ms   double precision,
    e2e_p50_ms     double precision,
    e2e_p99_ms     double precision
);

-- Ticks, one partition per UTC day (ticks_YYYYMMDD). The primary key's index
-- (symbol, ts, seq) also serves (symbol, ts) lookups, so no second index.
CREATE TABLE ticks (
    symbol   text NOT NULL,
    ts       timestamptz NOT NULL,
    seq      integer NOT NULL,
    price    double precision NOT NULL,
    volume   double precision NOT NULL,
    open     double precision,
    high     double precision,
    low      double precision,
    bid      double precision,
    ask      double precision,
    bid_size double precision,
    ask_size double precision,
    source   text NOT NULL,
    PRIMARY KEY (symbol, ts, seq)
) PARTITION BY RANGE (ts);

-- Rows of days without their own partition land here rather than fail.
CREATE TABLE ticks_default PARTITION OF ticks DEFAULT;

-- Creates ticks_YYYYMMDD for the UTC day [day, day + 1) unless it exists;
-- true when it created it. Rows of that day already in ticks_default are
-- moved into the new partition in the same transaction (otherwise Postgres
-- refuses to attach a range the default partition holds rows of).
CREATE FUNCTION stockanomaly_ensure_tick_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('ticks_%s', to_char(day, 'YYYYMMDD'));
    -- The bounds are UTC midnights whatever the session's TimeZone.
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    -- Two ingesters creating the same day: the second waits, then finds it.
    PERFORM pg_advisory_xact_lock(hashtext('stockanomaly_ensure_tick_partition'));
    IF to_regclass(format('%I.%I', current_schema(), part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE ticks INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    -- Writers into the default partition wait until the day is attached, so
    -- no row of that day can slip in between the move and the attach.
    LOCK TABLE ticks_default IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format(
        'WITH moved AS (DELETE FROM ticks_default WHERE ts >= %L AND ts < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE ticks ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN true;
END;
$$;
