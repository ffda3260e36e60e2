#!/usr/bin/env bash
# Run once by the postgres image when docker-compose.yml's postgres volume is
# first initialised (/docker-entrypoint-initdb.d): creates the login role the
# review page (`stockanomaly serve`) connects as (REVIEW_PG_USER /
# REVIEW_PG_PASSWORD from .env), a member of the group role
# `stockanomaly_review`. Migration 0004 (run later by `stockanomaly db
# migrate`) grants that group what the page needs: SELECT on what it shows
# and on the accounts, INSERT on dispositions, and its sessions; nothing on
# the detector's tables, no UPDATE or DELETE of alerts or verdicts.
#
# On an existing volume this never runs again: run the same statements by
# hand (then `stockanomaly db migrate`), or start from a fresh volume.
set -euo pipefail

if [ -z "${REVIEW_PG_USER:-}" ] || [ "$REVIEW_PG_USER" = "$POSTGRES_USER" ]; then
  echo "review-role: REVIEW_PG_USER is empty or the owner; the review page needs its own role" >&2
  exit 1
fi
if [ -z "${REVIEW_PG_PASSWORD:-}" ]; then
  echo "review-role: REVIEW_PG_PASSWORD is empty" >&2
  exit 1
fi

# psql variables keep the names out of the SQL text; the secret is read from
# the environment by psql itself (\getenv), never from a command line.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reviewer="$REVIEW_PG_USER" -v db="$POSTGRES_DB" <<'SQL'
\getenv reviewer_secret REVIEW_PG_PASSWORD
SELECT 'CREATE ROLE stockanomaly_review NOLOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stockanomaly_review') \gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE stockanomaly_review',
              :'reviewer', :'reviewer_secret') \gexec
GRANT CONNECT ON DATABASE :"db" TO :"reviewer";
SQL
echo "review-role: created the review page's role $REVIEW_PG_USER"
