// Every threshold, selector and URL the taskmedic alerts and dashboards use, in one place.
//
// Change a value here and run `make mixin` (rewrites rules/*.rules.yml, the Kubernetes
// PrometheusRule, the dashboards and their ConfigMap). Or, as a mixin user, override it
// from your own jsonnet:
//
//   (import 'taskmedic/deploy/mixin/mixin.libsonnet') + {
//     _config+:: { diskFreeCriticalPercent: 15 },
//   }
{
  _config+:: {
    // Scrape jobs. Every alert and panel selects its series with these.
    exporterSelector: 'job="taskmedic-exporter"',
    remediatorSelector: 'job="taskmedic-remediator"',
    // Grafana: labels the dashboard's variables are built from; a cluster variable is shown
    // when showMultiCluster is true (metrics carry `clusterLabel`).
    showMultiCluster: false,
    clusterLabel: 'cluster',
    dashboardTags: ['taskmedic'],
    dashboardTimezone: 'browser',

    // https://.../runbooks.md#<alertname in lower case>
    runbookURLPattern: 'https://github.com/taskmedic/taskmedic/blob/main/docs/runbooks.md#%s',

    // Tasks. What counts as stuck is the exporter profile's setting, not a rule threshold.
    stuckTasksFor: '5m',  // debounce before TaskmedicStuckTasks (and its playbook) fires
    // The playbooks' healing window: still stuck this long after the alert fired = not healed,
    // page. Longer than a playbook's cooldown times a few runs (shipped: 5-30 min cooldowns).
    stuckTasksNotHealedFor: '1h',
    oldestPendingSeconds: 2 * 3600,
    oldestPendingFor: '15m',
    // Unknown liveness or a wrong zone: stuck counts cannot be trusted (and nothing is repaired).
    judgementUntrustedFor: '10m',
    waitingStatusRegex: '(?i)pending|scheduled|queued|new|runnable',

    // Job engines. Work that the engine itself drops soon after its worker dies (reason
    // `expiring`: a Sidekiq process' running jobs expire with its keys 60 s after its last beat)
    // cannot wait for stuckTasksFor: TaskmedicHeldWorkExpiring fires at once, in a group evaluated
    // this often whatever Prometheus' global evaluation_interval is (default 1m: too late).
    heldWorkExpiringFor: '0m',
    heldWorkEvaluationInterval: '5s',

    // Queues.
    queueBacklogMessages: 1000,
    queueBacklogWindow: '30m',
    queueBacklogFor: '30m',
    queueOldestSeconds: 3600,
    queueOldestFor: '15m',

    // Disks: node-exporter mixin's shape. Filling up = below X % free AND a linear prediction
    // over `diskPredictionWindow` says full within the horizon, for diskFillingUpFor.
    diskPredictionWindow: '6h',
    diskFreeWarningPercent: 40,  // ... and full within 24h: warning
    diskFreeWarningHorizonHours: 24,
    diskFreeCriticalPercent: 20,  // CAPE operators' "keep >= 20 % free": critical if full within 4h
    diskFreeCriticalHorizonHours: 4,
    diskFillingUpFor: '1h',
    diskAlmostOutPercent: 5,  // almost out, whatever the trend: critical
    diskAlmostOutFor: '10m',
    // Housekeeping trigger for cleanup playbooks (cape-free-disk): severity info, never a page.
    diskHousekeepingPercent: 20,
    diskHousekeepingFor: '5m',

    // Backups.
    backupMaxAgeSeconds: 26 * 3600,  // daily backups + 2h slack
    backupMaxAgeFor: '15m',
    backupInvalidFor: '10m',
    backupShrunkRatio: 0.5,
    backupShrunkFor: '10m',
    // The sysreptor-quarantine-broken-backup playbook re-runs the backup; still invalid after
    // this long = not healed, page.
    backupInvalidNotHealedFor: '2h',

    // taskmedic itself.
    exporterDownFor: '5m',
    remediatorDownFor: '5m',
    collectorDownFor: '5m',
    collectorStaleSeconds: 300,  // raise it if a collector's interval is above 5 minutes
    collectorStaleFor: '5m',
    circuitOpenFor: '1m',
    // Remediation paused (POST /pause, `taskmedic-remediator pause`) and not resumed: page.
    pausedTooLongSeconds: 4 * 3600,
    pausedTooLongFor: '5m',
    webhookErrorsWindow: '15m',
    webhookErrorsFor: '5m',
  },
}
