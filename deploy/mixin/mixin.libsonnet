// taskmedic monitoring mixin: alerts (prometheusAlerts) and dashboards (grafanaDashboards).
// Thresholds, selectors and the runbook URL pattern are in config.libsonnet (`_config`).
(import 'config.libsonnet') +
(import 'alerts/tasks.libsonnet') +
(import 'alerts/engines.libsonnet') +
(import 'alerts/queues.libsonnet') +
(import 'alerts/disk.libsonnet') +
(import 'alerts/backups.libsonnet') +
(import 'alerts/taskmedic.libsonnet') +
(import 'dashboards/overview.libsonnet')
