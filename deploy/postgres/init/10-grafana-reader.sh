#!/bin/sh
# A read-only role for Grafana's Postgres datasource: it may read the read models, nothing else.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE grafana_reader LOGIN PASSWORD '${COPILOT_GRAFANA_DB_PASSWORD}';
GRANT CONNECT ON DATABASE copilot TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE copilot IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
SQL
