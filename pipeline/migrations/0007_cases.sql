-- Alert cases: one symbol's episode of alerts, what an analyst reviews.
-- The streaming detector upserts a case in the same transaction as its
-- alerts and offsets, with everything its case score needs (a restarted
-- detector restores the open cases of its partitions from here). A case
-- that never opened is deleted when it closes; one still open and not yet
-- opened has opened_ts NULL and is no analyst's work.
CREATE TABLE cases (
    model_version    text NOT NULL,
    case_id          text NOT NULL,
    symbol           text NOT NULL,
    start_ts         timestamptz NOT NULL,
    end_ts           timestamptz NOT NULL,
    alerts           integer NOT NULL CHECK (alerts > 0),
    model_alerts     integer NOT NULL CHECK (model_alerts >= 0),
    peak_score       double precision,
    peak_ts          timestamptz,
    score_sum        double precision NOT NULL,
    case_score       double precision NOT NULL,
    opened_ts        timestamptz,
    detectors        text NOT NULL,
    detector_bits    bigint NOT NULL,
    top_shap         jsonb,
    status           text NOT NULL CHECK (status IN ('open', 'closed')),
    source           text NOT NULL,
    source_partition integer,
    updated          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version, case_id)
);
CREATE INDEX cases_opened_idx ON cases (opened_ts) WHERE opened_ts IS NOT NULL;
CREATE INDEX cases_open_idx ON cases (model_version, source, source_partition)
    WHERE status = 'open';
