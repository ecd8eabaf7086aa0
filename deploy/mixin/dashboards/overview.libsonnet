// The overview dashboard: stuck tasks, queues, disks, backups, collectors and what the remediator did.
//
// Every query selects the exporter's or the remediator's series with _config's selectors plus the
// $cluster/$job/$instance variables; counts reported by several exporters watching one database are
// combined with max, never summed; rates use $__rate_interval; red lines come from the same _config
// values as the alerts.
local lib = import '../lib.libsonnet';

local ds = { type: 'prometheus', uid: '${datasource}' };

local target(expr, legend) = { datasource: ds, expr: expr, legendFormat: legend, range: true, instant: false };

local withRefIds(targets) = [targets[i] { refId: std.char(std.codepoint('A') + i) } for i in std.range(0, std.length(targets) - 1)];

local thresholds(steps) = { mode: 'absolute', steps: [{ color: s[0], value: s[1] } for s in steps] };

local timeseries(title, description, targets, unit='short', lineWidth=1, fillOpacity=10, stacking='none', extra={}) = {
  type: 'timeseries',
  title: title,
  description: description,
  datasource: ds,
  targets: withRefIds(targets),
  fieldConfig: {
    defaults: {
      unit: unit,
      custom: {
        drawStyle: 'line',
        lineWidth: lineWidth,
        fillOpacity: fillOpacity,
        showPoints: 'never',
        stacking: { mode: stacking, group: 'A' },
      },
    },
    overrides: [],
  },
  options: {
    legend: { displayMode: 'table', placement: 'bottom', calcs: ['lastNotNull', 'max'] },
    tooltip: { mode: 'multi', sort: 'desc' },
  },
} + extra;

// Red below 1, green from 1: a 0/1 gauge (or a count that must not be 0) as a coloured tile.
local stat(title, description, targets, texts=null) = {
  type: 'stat',
  title: title,
  description: description,
  datasource: ds,
  targets: withRefIds(targets),
  fieldConfig: {
    defaults: {
      unit: 'short',
      thresholds: thresholds([['red', null], ['green', 1]]),
      [if texts != null then 'mappings']: [{
        type: 'value',
        options: { '0': { text: texts[0], color: 'red' }, '1': { text: texts[1], color: 'green' } },
      }],
    },
    overrides: [],
  },
  options: {
    reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
    colorMode: 'background',
    graphMode: 'none',
    textMode: 'value_and_name',
    justifyMode: 'auto',
    orientation: 'auto',
  },
};

local redLine(steps) = {
  fieldConfig+: { defaults+: { custom+: { thresholdsStyle: { mode: 'dashed' } }, thresholds: thresholds(steps) } },
};

local ratioAxis = { fieldConfig+: { defaults+: { min: 0, max: 1 } } };

// Rows of panels, 8 high, laid out left to right: [{ title, panels: [[panel, width], ...] }, ...].
local grid(sections) =
  local sizes = [1 + std.length(s.panels) for s in sections];
  local firstId(i) = 1 + std.foldl(function(sum, n) sum + n, sizes[0:i], 0);
  std.flattenArrays([
    local s = sections[i];
    local y = i * 9;
    [{ type: 'row', title: s.title, collapsed: false, panels: [], id: firstId(i), gridPos: { h: 1, w: 24, x: 0, y: y } }] + [
      s.panels[j][0] {
        id: firstId(i) + 1 + j,
        gridPos: { h: 8, w: s.panels[j][1], x: std.foldl(function(x, p) x + p[1], s.panels[0:j], 0), y: y + 1 },
      }
      for j in std.range(0, std.length(s.panels) - 1)
    ]
    for i in std.range(0, std.length(sections) - 1)
  ]);

local queryVariable(name, label, query, hide=0) = {
  name: name,
  label: label,
  type: 'query',
  datasource: ds,
  definition: query,
  query: query,
  refresh: 2,
  multi: true,
  includeAll: true,
  allValue: '.*',
  current: { selected: true, text: ['All'], value: ['$__all'] },
  sort: 1,
  hide: hide,
  regex: '',
  options: [],
};

{
  grafanaDashboards+:: {
    local c = $._config,
    // Series of the chosen exporters; of their systems; of the remediators.
    local exp = '%(exporterSelector)s, cluster=~"$cluster", job=~"$job", instance=~"$instance"' % c,
    local sys = exp + ', system=~"$system"',
    local rem = '%(remediatorSelector)s, cluster=~"$cluster"' % c,

    'taskmedic-overview.json': {
      uid: 'taskmedic-overview',
      title: 'taskmedic overview',
      description: 'Stuck tasks, queues, disks, backups and what taskmedic did about them.',
      tags: c.dashboardTags,
      timezone: c.dashboardTimezone,
      editable: true,
      graphTooltip: 1,
      refresh: '30s',
      schemaVersion: 39,
      version: 1,
      time: { from: 'now-6h', to: 'now' },
      timepicker: {},
      links: [{
        title: 'Runbooks',
        type: 'link',
        targetBlank: true,
        icon: 'doc',
        url: std.split(c.runbookURLPattern, '#')[0],
      }],
      annotations: {
        list: [
          {
            builtIn: 1,
            datasource: { type: 'grafana', uid: '-- Grafana --' },
            enable: true,
            hide: true,
            iconColor: 'rgba(0, 211, 255, 1)',
            name: 'Annotations & Alerts',
            type: 'dashboard',
          },
          {
            name: 'Remediation runs',
            datasource: ds,
            enable: true,
            hide: false,
            iconColor: 'orange',
            expr: 'sum by (playbook, outcome) (increase(taskmedic_remediation_runs_total{%s}[2m])) > 0' % rem,
            step: '60s',
            titleFormat: '{{playbook}}: {{outcome}}',
            textFormat: 'taskmedic ran {{playbook}} ({{outcome}})',
            tagKeys: 'playbook,outcome',
            useValueForTime: false,
          },
        ],
      },
      templating: {
        list: [
          {
            name: 'datasource',
            label: 'Data source',
            type: 'datasource',
            query: 'prometheus',
            current: {},
            hide: 0,
            refresh: 1,
            regex: '',
            options: [],
            includeAll: false,
            multi: false,
          },
          queryVariable('cluster', 'Cluster', 'label_values(taskmedic_collector_up{%s}, %s)' % [c.exporterSelector, c.clusterLabel],
                        hide=if c.showMultiCluster then 0 else 2),
          queryVariable('job', 'Job', 'label_values(taskmedic_collector_up{%s, cluster=~"$cluster"}, job)' % c.exporterSelector),
          queryVariable('instance', 'Instance',
                        'label_values(taskmedic_collector_up{%s, cluster=~"$cluster", job=~"$job"}, instance)' % c.exporterSelector),
          queryVariable('system', 'System', 'label_values(taskmedic_tasks{%s}, system)' % exp),
        ],
      },
      panels: grid([
        {
          title: 'Tasks',
          panels: [
            [timeseries('Tasks by status',
                        "taskmedic_tasks: tasks per system and status (the system's own status values).",
                        [target('max by (system, status) (taskmedic_tasks{%s})' % sys, '{{system}} {{status}}')]), 8],
            [timeseries('Stuck tasks by reason',
                        "taskmedic_stuck_tasks: tasks judged stuck by the exporter's profile, per reason (the job engines' work held by dead workers: status held, reasons worker_gone, stalled, expiring). Any value above 0 for %s fires TaskmedicStuckTasks; still above 0 after %s fires TaskmedicStuckTasksNotHealed. Reason expiring (Sidekiq: lost a minute after its process died) fires TaskmedicHeldWorkExpiring after %s." % [c.stuckTasksFor, c.stuckTasksNotHealedFor, c.heldWorkExpiringFor],
                        [target('max by (system, status, reason) (taskmedic_stuck_tasks{%s})' % sys,
                                '{{system}} {{status}} {{reason}}')],
                        lineWidth=2, fillOpacity=20,
                        extra={ fieldConfig+: { defaults+: {
                          custom+: { thresholdsStyle: { mode: 'line' } },
                          thresholds: thresholds([['green', null], ['red', 1]]),
                        } } }), 8],
            [timeseries('Oldest waiting work',
                        'Age of the oldest task per live status (taskmedic_task_oldest_age_seconds) and of the oldest waiting message per queue, where messages carry an enqueue time (taskmedic_queue_oldest_age_seconds).',
                        [target(('max by (system, status) (taskmedic_task_oldest_age_seconds{%s})' % sys) + ' or ' +
                                ('max by (system, queue) (taskmedic_queue_oldest_age_seconds{%s})' % sys),
                                '{{system}} {{status}}{{queue}}')],
                        unit='s'), 8],
          ],
        },
        {
          title: 'Queues',
          panels: [
            [timeseries('Queue depth', 'taskmedic_queue_depth: messages waiting (Celery priority sub-queues included).',
                        [target('max by (system, queue) (taskmedic_queue_depth{%s})' % sys, '{{system}} {{queue}}')]), 12],
            [timeseries('Work held by workers',
                        "taskmedic_queue_unacked: work a worker has taken and not yet finished or acknowledged, per queue: Celery `unacked`, RQ's started registry, Harbor's in-progress jobs, and the job engines' held work (Dramatiq acks, BullMQ active, Sidekiq processes' running jobs, arq in-progress). The part whose holder is dead shows in Stuck tasks by reason (status held).",
                        [target('max by (system, queue) (taskmedic_queue_unacked{%s})' % sys, '{{system}} {{queue}}')]), 12],
          ],
        },
        {
          title: 'Disks',
          panels: [
            [timeseries('Disk free',
                        'taskmedic_disk_free_ratio. Orange below %d %% and red below %d %%: the warning and critical lines of TaskmedicDiskFillingUp, which also need the %dh/%dh prediction (next panel).' % [c.diskFreeWarningPercent, c.diskFreeCriticalPercent, c.diskFreeWarningHorizonHours, c.diskFreeCriticalHorizonHours],
                        [target('taskmedic_disk_free_ratio{%s}' % exp, '{{instance}} {{path}}')],
                        unit='percentunit', lineWidth=2,
                        extra=ratioAxis + redLine([['red', null], ['orange', c.diskFreeCriticalPercent / 100],
                                                   ['green', c.diskFreeWarningPercent / 100]])), 8],
            [timeseries('Disk free bytes and %dh prediction' % c.diskFreeWarningHorizonHours,
                        "taskmedic_disk_free_bytes and where the last %s' trend puts it in %d hours (the TaskmedicDiskFillingUp prediction). Below 0 means full within that time." % [c.diskPredictionWindow, c.diskFreeWarningHorizonHours],
                        [target('taskmedic_disk_free_bytes{%s}' % exp, '{{instance}} {{path}} free'),
                         target('predict_linear(taskmedic_disk_free_bytes{%s}[%s], %d * 3600)' % [exp, c.diskPredictionWindow, c.diskFreeWarningHorizonHours],
                                '{{instance}} {{path}} in %dh' % c.diskFreeWarningHorizonHours)],
                        unit='bytes'), 8],
            [timeseries('Inodes free', 'taskmedic_disk_inodes_free_ratio (1 where the filesystem has no inode limit).',
                        [target('taskmedic_disk_inodes_free_ratio{%s}' % exp, '{{instance}} {{path}}')],
                        unit='percentunit', extra=ratioAxis), 8],
          ],
        },
        {
          title: 'Backups',
          panels: [
            [timeseries('Backup size: newest and previous',
                        'taskmedic_backup_size_bytes (newest file) and taskmedic_backup_previous_size_bytes. Newest below %g %% of the previous fires TaskmedicBackupShrunk.' % (c.backupShrunkRatio * 100),
                        [target('taskmedic_backup_size_bytes{%s}' % exp, '{{backup}} newest'),
                         target('taskmedic_backup_previous_size_bytes{%s}' % exp, '{{backup}} previous')],
                        unit='bytes'), 8],
            [timeseries('Age of the newest valid backup',
                        'time() - taskmedic_backup_last_valid_timestamp_seconds: the series TaskmedicBackupTooOld alerts on (red above its threshold). A backup that has never been valid shows no line here and fires the alert at once.',
                        [target('time() - (taskmedic_backup_last_valid_timestamp_seconds{%s} > 0)' % exp, '{{backup}}')],
                        unit='s', extra=redLine([['green', null], ['red', c.backupMaxAgeSeconds]])), 8],
            [stat('Newest backup valid', 'taskmedic_backup_valid: 1 when the newest finished file is structurally complete.',
                  [target('taskmedic_backup_valid{%s}' % exp, '{{backup}}')], texts=['INVALID', 'valid']), 4],
            [stat('Backup files', 'taskmedic_backup_files: files matching the backup pattern.',
                  [target('taskmedic_backup_files{%s}' % exp, '{{backup}}')]), 4],
          ],
        },
        {
          title: 'Collectors',
          panels: [
            [stat('Collector up', "taskmedic_collector_up: 0 means the collector's database, Redis or path cannot be read.",
                  [target('taskmedic_collector_up{%s}' % exp, '{{instance}} {{collector}}')], texts=['DOWN', 'up']), 8],
            [timeseries('Collector duration', "taskmedic_collector_duration_seconds: duration of each collector's last run.",
                        [target('taskmedic_collector_duration_seconds{%s}' % exp, '{{instance}} {{collector}}')], unit='s'), 8],
            [timeseries('Time since last successful collection',
                        'time() - taskmedic_collector_last_success_timestamp_seconds. Above %s fires TaskmedicCollectorStale.' % lib.duration(c.collectorStaleSeconds),
                        [target('time() - taskmedic_collector_last_success_timestamp_seconds{%s}' % exp, '{{instance}} {{collector}}')],
                        unit='s', extra=redLine([['green', null], ['red', c.collectorStaleSeconds]])), 8],
          ],
        },
        {
          title: 'Remediation',
          panels: [
            [timeseries('Remediation runs by outcome',
                        'increase(taskmedic_remediation_runs_total[$__rate_interval]) per playbook and outcome (succeeded, failed, dry_run, refused, suppressed, skipped, interrupted), summed over the remediator replicas (each run happens on one).',
                        [target('sum by (playbook, outcome) (increase(taskmedic_remediation_runs_total{%s}[$__rate_interval]))' % rem,
                                '{{playbook}} {{outcome}}')],
                        stacking='normal'), 8],
            [timeseries('Remediation duration (p95)', '95th percentile of taskmedic_remediation_duration_seconds per playbook.',
                        [target('histogram_quantile(0.95, sum by (playbook, le) (rate(taskmedic_remediation_duration_seconds_bucket{%s}[$__rate_interval])))' % rem,
                                '{{playbook}}')],
                        unit='s'), 8],
            [timeseries('Circuit breakers and webhook',
                        'taskmedic_playbook_circuit_open per playbook (1 = suppressed) and webhook requests per second by HTTP code.',
                        [target('max by (playbook) (taskmedic_playbook_circuit_open{%s})' % rem, 'circuit open {{playbook}}'),
                         target('sum by (code) (rate(taskmedic_webhook_requests_total{%s}[$__rate_interval]))' % rem, 'webhook {{code}}')]), 8],
          ],
        },
      ]),
    },
  },
}
