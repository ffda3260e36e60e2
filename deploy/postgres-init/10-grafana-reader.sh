#!/usr/bin/env bash
# Run once by the postgres image when docker-compose.yml's postgres volume is
# first initialised (/docker-entrypoint-initdb.d): creates the read-only role
# Grafana's datasource logs in as (GRAFANA_PG_USER / GRAFANA_PG_PASSWORD from
# .env). It may read every table that POSTGRES_USER creates in `public` (the
# migrations, run later by `stockanomaly db migrate`), and write none.
#
# On an existing volume this never runs again: create the role by hand with
# the same statements, or start from a fresh volume.
set -euo pipefail

if [ -z "${GRAFANA_PG_USER:-}" ] || [ "$GRAFANA_PG_USER" = "$POSTGRES_USER" ]; then
  echo "grafana-reader: GRAFANA_PG_USER is empty or the owner; no read-only role created"
  exit 0
fi
if [ -z "${GRAFANA_PG_PASSWORD:-}" ]; then
  echo "grafana-reader: GRAFANA_PG_PASSWORD is empty" >&2
  exit 1
fi

# psql variables (:"name" quotes an identifier, :'name' a literal) keep the
# names out of the SQL text; the secret is read from the environment by
# psql itself (\getenv), so it never appears on a command line (ps) either.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader="$GRAFANA_PG_USER" -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
\getenv reader_secret GRAFANA_PG_PASSWORD
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'reader', :'reader_secret') \gexec
GRANT CONNECT ON DATABASE :"db" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
echo "grafana-reader: created the read-only role $GRAFANA_PG_USER"
