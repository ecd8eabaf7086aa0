local lib = import '../lib.libsonnet';

// A playbook outcome counted in the last hour. The second branch catches a counter series born
// with its first run (client libraries create a labelled series on first use), which increase()
// cannot see.
local outcomeInLastHour(c, outcomes) =
  local sel = '%s, outcome=~"%s"' % [c.remediatorSelector, outcomes];
  |||
    sum without (outcome) (
      (increase(taskmedic_remediation_runs_total{%(sel)s}[1h]) > 0)
      or
      (
        taskmedic_remediation_runs_total{%(sel)s} > 0
        unless
        taskmedic_remediation_runs_total{%(sel)s} offset 1h
      )
    )
  ||| % { sel: sel };

{
  prometheusAlerts+:: {
    groups+: [
      {
        local c = $._config,
        file:: 'taskmedic.rules.yml',
        header:: |||
          taskmedic's own health: the exporter and its collectors (without them every other alert is
          silent), and the remediator. Failed, refused or suppressed repairs page people: the alert
          they were meant to heal went to the remediator only.
        |||,
        name: 'taskmedic-self',
        rules: [
          lib.alert(
            c,
            'TaskmedicExporterDown',
            |||
              up{%(exporterSelector)s} == 0
              or
              absent(up{%(exporterSelector)s})
            ||| % c,
            c.exporterDownFor,
            'critical',
            'taskmedic exporter {{ with $labels.instance }}{{ . }}{{ else }}(no target){{ end }} is down',
            |||
              Prometheus cannot scrape job {{ $labels.job }}{{ with $labels.instance }} at {{ . }} (up = {{ $value }}){{ else }}: no target of this job is discovered at all{{ end }}.
              Every stuck-task, queue, disk and backup alert is blind until it is back.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicRemediatorDown',
            |||
              up{%(remediatorSelector)s} == 0
            ||| % c,
            c.remediatorDownFor,
            'warning',
            'taskmedic remediator {{ $labels.instance }} is down',
            |||
              Prometheus cannot scrape job {{ $labels.job }} at {{ $labels.instance }} (up = {{ $value }}).
              Alertmanager's webhook deliveries fail and nothing is healed automatically; alerts still
              reach people.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicCollectorDown',
            |||
              taskmedic_collector_up{%(exporterSelector)s} == 0
            ||| % c,
            c.collectorDownFor,
            'warning',
            'taskmedic collector {{ $labels.collector }} is failing',
            |||
              Collector {{ $labels.collector }} on {{ $labels.instance }} reports up = {{ $value }}: its
              database, Redis or path cannot be read and its series are gone, so alerts about it
              cannot fire. The exporter log names the error.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicCollectorStale',
            // A collector that hangs (query blocked on a lock, Redis not answering) without failing.
            // Collectors that report up == 0 are left to TaskmedicCollectorDown.
            |||
              (time() - taskmedic_collector_last_success_timestamp_seconds{%(exporterSelector)s} > %(collectorStaleSeconds)d)
              unless on (collector, instance, job)
              (taskmedic_collector_up{%(exporterSelector)s} == 0)
            ||| % c,
            c.collectorStaleFor,
            'warning',
            'taskmedic collector {{ $labels.collector }} has not succeeded for {{ $value | humanizeDuration }}',
            |||
              Collector {{ $labels.collector }} on {{ $labels.instance }} last collected successfully
              {{ $value | humanizeDuration }} ago (threshold %s). Its metrics are stale; a query may be
              hanging on a lock or the exporter's loop is stuck.
            ||| % lib.duration(c.collectorStaleSeconds),
          ),
          lib.alert(
            c,
            'TaskmedicRemediationFailing',
            outcomeInLastHour(c, 'failed|interrupted'),
            '0m',
            'warning',
            'Playbook {{ $labels.playbook }} failed in the last hour',
            |||
              Playbook {{ $labels.playbook }} had about {{ $value | printf "%.0f" }} failed or interrupted
              run(s) in the last hour (remediator {{ $labels.instance }}). The problem it was meant to
              heal is probably still there; GET /runs on the remediator shows the failing step.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicRemediationRefused',
            outcomeInLastHour(c, 'refused'),
            '0m',
            'warning',
            'Playbook {{ $labels.playbook }} was refused by a guard',
            |||
              Playbook {{ $labels.playbook }} was refused about {{ $value | printf "%.0f" }} time(s) in
              the last hour (remediator {{ $labels.instance }}): a guard such as max_rows stopped it and
              its changes were rolled back. The problem is bigger than the playbook may fix alone.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicPlaybookCircuitOpen',
            |||
              taskmedic_playbook_circuit_open{%(remediatorSelector)s} > 0
            ||| % c,
            c.circuitOpenFor,
            'warning',
            'Playbook {{ $labels.playbook }}: circuit breaker open',
            |||
              Playbook {{ $labels.playbook }} hit its max_runs_per_hour on {{ $labels.instance }} and is
              suppressed (circuit_open = {{ $value }}). It keeps being triggered, so its repair does
              not last: the cause is upstream.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicRemediationPausedTooLong',
            // A pause is for a maintenance window or an investigation; one that is forgotten leaves
            // every incident it would have healed to people who are not being paged for it.
            |||
              time() - taskmedic_remediation_paused_since_timestamp_seconds{%(remediatorSelector)s} > %(threshold)s
            ||| % (c { threshold: lib.secondsExpr(c.pausedTooLongSeconds) }),
            c.pausedTooLongFor,
            'warning',
            'Remediation paused for {{ $labels.scope }} for more than %s' % std.strReplace(lib.duration(c.pausedTooLongSeconds), 'h', ' hours'),
            |||
              Remediation on {{ $labels.instance }} has been paused for scope {{ $labels.scope }}
              (* = every playbook) for {{ $value | humanizeDuration }}. Alerts are journaled but
              their runs end suppressed.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicWebhookErrors',
            // 5xx: the journal database is unreachable (Alertmanager retries);
            // 401/403: Alertmanager's credentials do not match the remediator's auth.
            |||
              sum without (code) (
                increase(taskmedic_webhook_requests_total{%(remediatorSelector)s, code=~"5..|401|403"}[%(webhookErrorsWindow)s])
              ) > 0
            ||| % c,
            c.webhookErrorsFor,
            'warning',
            'taskmedic remediator {{ $labels.instance }} rejects Alertmanager webhooks',
            |||
              The remediator on {{ $labels.instance }} answered about {{ $value | printf "%%.0f" }}
              webhook request(s) with 5xx, 401 or 403 in the last %s. Alerts are not being
              journaled, so nothing is healed.
            ||| % std.strReplace(c.webhookErrorsWindow, 'm', ' minutes'),
          ),
        ],
      },
    ],
  },
}
