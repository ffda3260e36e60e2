-- The analysts' verdicts on alerts (`stockanomaly serve`). A disposition is
-- never updated or deleted: a new verdict is a new row, and an alert's
-- status is its latest row's (`alert_status`). `stockanomaly labels export`
-- turns the latest verdicts into lake labels.

CREATE TABLE dispositions (
    id       bigserial PRIMARY KEY,
    alert_id bigint NOT NULL REFERENCES alerts (id),
    status   text NOT NULL CHECK (status IN ('confirmed', 'dismissed', 'escalated')),
    -- The manipulation kind a confirmed alert is labelled with.
    kind     text,
    note     text NOT NULL DEFAULT '',
    analyst  text NOT NULL CHECK (length(analyst) BETWEEN 1 AND 64),
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dispositions_alert_idx ON dispositions (alert_id, id);

-- History is kept: the table refuses updates and deletes, whoever asks.
CREATE FUNCTION stockanomaly_dispositions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dispositions are append-only: record a new verdict instead';
END;
$$;
CREATE TRIGGER dispositions_append_only
    BEFORE UPDATE OR DELETE ON dispositions
    FOR EACH ROW EXECUTE FUNCTION stockanomaly_dispositions_append_only();

-- Each reviewed alert's latest verdict.
CREATE VIEW alert_status AS
SELECT DISTINCT ON (alert_id) alert_id, id AS disposition_id, status, kind, note, analyst, at
FROM dispositions
ORDER BY alert_id, id DESC;
