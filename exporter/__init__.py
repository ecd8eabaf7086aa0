"""taskmedic exporter: task-health metrics from PostgreSQL, Redis, disks and backups."""
