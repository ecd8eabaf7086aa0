#!/bin/sh
# Runs once, when the postgres volume is first initialised: creates the example `cape` database
# with CAPE's tasks schema (/seed/cape.sql). The journal database `taskmedic` is POSTGRES_DB;
# the remediator creates its table there.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c 'CREATE DATABASE cape'
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname cape -f /seed/cape.sql
