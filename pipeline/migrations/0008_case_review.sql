-- Analysts review cases (`stockanomaly serve`): a case gets a surrogate id
-- for its page, the wall-clock time it first opened (time to a verdict is
-- measured from there), and verdicts of its own, append-only like the
-- alerts' (`case_status` is each case's latest). `stockanomaly labels
-- export` turns the latest case verdicts into labels over the case's span.

-- Filled for the cases already stored; new rows take the next value, and an
-- upsert of an existing case keeps its id.
ALTER TABLE cases ADD COLUMN id bigserial;
CREATE UNIQUE INDEX cases_id_idx ON cases (id);
-- When the detector first stored the case opened (NULL before it opens, or
-- for cases opened before this migration).
ALTER TABLE cases ADD COLUMN opened_at timestamptz;
-- The manipulation kinds the detectors that fired in it tell (a rule's
-- `-- kinds:`), comma-separated; NULL when none tells one.
ALTER TABLE cases ADD COLUMN likely_kinds text;
-- The queue: opened cases, highest case score first.
CREATE INDEX cases_queue_idx ON cases (case_score DESC, id) WHERE opened_ts IS NOT NULL;
CREATE INDEX cases_symbol_idx ON cases (symbol, start_ts) WHERE opened_ts IS NOT NULL;

-- Only opened cases get verdicts, and an opened case is never deleted (the
-- detector deletes only cases that closed unopened), so the reference holds.
CREATE TABLE case_dispositions (
    id       bigserial PRIMARY KEY,
    case_ref bigint NOT NULL REFERENCES cases (id),
    status   text NOT NULL CHECK (status IN ('confirmed', 'dismissed', 'escalated')),
    -- The manipulation kind a confirmed case is labelled with.
    kind     text,
    note     text NOT NULL DEFAULT '',
    analyst  text NOT NULL CHECK (length(analyst) BETWEEN 1 AND 64),
    user_id  bigint REFERENCES review_users (id),
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_dispositions_case_idx ON case_dispositions (case_ref, id);
CREATE INDEX case_dispositions_at_idx ON case_dispositions (at);

CREATE TRIGGER case_dispositions_append_only
    BEFORE UPDATE OR DELETE ON case_dispositions
    FOR EACH ROW EXECUTE FUNCTION stockanomaly_dispositions_append_only();

-- Each reviewed case's latest verdict.
CREATE VIEW case_status AS
SELECT DISTINCT ON (case_ref) case_ref, id AS disposition_id, status, kind, note, analyst, at
FROM case_dispositions
ORDER BY case_ref, id DESC;

-- The review server reads cases and adds their verdicts (see migration 0004
-- for the group role; skipped with a notice when it does not exist).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stockanomaly_review') THEN
        GRANT SELECT ON cases, case_status TO stockanomaly_review;
        GRANT SELECT, INSERT ON case_dispositions TO stockanomaly_review;
        GRANT USAGE ON SEQUENCE case_dispositions_id_seq TO stockanomaly_review;
    ELSE
        RAISE NOTICE 'role stockanomaly_review does not exist: grant it SELECT on cases '
            'and case_status, SELECT and INSERT on case_dispositions by hand';
    END IF;
END;
$$;
