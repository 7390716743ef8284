#!/bin/sh
# A login for Grafana's Postgres datasource. It can connect and nothing more until the copilot
# adopts it as a tenant's reader (`copilot tenants grafana-reader default --role grafana_reader`,
# which the compose stack's `grafana-reader` step runs): then it reads that tenant's read models
# and nothing else (no other tenant's rows, no secrets, no token hashes).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE grafana_reader LOGIN PASSWORD '${COPILOT_GRAFANA_DB_PASSWORD}';
GRANT CONNECT ON DATABASE copilot TO grafana_reader;
SQL
