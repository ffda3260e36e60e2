-- Who may use the review app (`stockanomaly serve`), and what its server may
-- touch. Accounts are managed by `stockanomaly users` (as the schema owner);
-- the server signs people in against them and keeps their sessions here.

CREATE TABLE review_users (
    id                  bigserial PRIMARY KEY,
    -- What verdicts record as their analyst (dispositions.analyst: 1-64).
    name                text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
    role                text NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    -- An Argon2id PHC string; NULL for an account that never signs in with
    -- a password (a role for a name an SSO proxy asserts).
    password_hash       text,
    disabled            boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz
);

-- Server-side sessions. The cookie carries a random token; only its SHA-256
-- is stored, so reading this table signs no one in.
CREATE TABLE review_sessions (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id    bigint NOT NULL REFERENCES review_users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX review_sessions_user_idx ON review_sessions (user_id);
CREATE INDEX review_sessions_expires_idx ON review_sessions (expires_at);

-- The account behind a verdict (NULL for verdicts from before accounts, or
-- from a proxy-asserted name without one). `analyst` keeps the name.
ALTER TABLE dispositions ADD COLUMN user_id bigint REFERENCES review_users (id);

-- Password and session hashes are for the review server alone: take them
-- back from roles that default privileges gave them (docker-compose.yml's
-- read-only Grafana role reads every table its owner creates).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole AS grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid IN ('review_users'::regclass, 'review_sessions'::regclass)
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('REVOKE ALL ON review_users, review_sessions FROM %s', r.grantee);
    END LOOP;
END;
$$;

-- The review server's privileges, granted to the group role
-- `stockanomaly_review`: a login role for `serve` is made a member of it
-- (deploy/postgres-init/20-review-role.sh does so in docker-compose.yml).
-- It reads what the pages show and the accounts it signs in against, adds
-- verdicts, and keeps sessions; it cannot change alerts, users or history.
-- Creating the group needs CREATEROLE: without it (and without the group,
-- made beforehand by an administrator) the grants are skipped with a notice.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stockanomaly_review') THEN
        BEGIN
            CREATE ROLE stockanomaly_review NOLOGIN;
        EXCEPTION
            -- Another database of the cluster made it meanwhile.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role stockanomaly_review not created (no CREATEROLE): '
                    'create it and run the grants of migration 0004 by hand';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stockanomaly_review') THEN
        GRANT USAGE ON SCHEMA public TO stockanomaly_review;
        GRANT SELECT ON alerts, alert_status, ticks, review_users TO stockanomaly_review;
        GRANT SELECT, INSERT ON dispositions TO stockanomaly_review;
        GRANT USAGE ON SEQUENCE dispositions_id_seq TO stockanomaly_review;
        GRANT SELECT, INSERT, UPDATE, DELETE ON review_sessions TO stockanomaly_review;
    END IF;
END;
$$;
