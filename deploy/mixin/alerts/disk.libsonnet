local lib = import '../lib.libsonnet';

// Filling up (warning and critical) and almost out, for bytes or inodes: node-exporter mixin's
// filesystem alerts on taskmedic's series.
local fillingUp(c, name, ratioMetric, predictedMetric, what, percent, hours, severity) = lib.alert(
  c,
  name,
  |||
    %(ratioMetric)s{%(exporterSelector)s} < %(ratio)s
    and
    predict_linear(%(predictedMetric)s{%(exporterSelector)s}[%(diskPredictionWindow)s], %(hours)d * 3600) < 0
  ||| % (c { ratioMetric: ratioMetric, predictedMetric: predictedMetric, ratio: lib.ratio(percent), hours: hours }),
  c.diskFillingUpFor,
  severity,
  if what == 'disk' then
    '{{ $labels.path }}: disk predicted to be full within %d hours' % hours
  else
    '{{ $labels.path }}: inodes predicted to run out within %d hours' % hours,
  |||
    Filesystem holding {{ $labels.path }} has {{ $value | humanizePercentage }} %(free)s and, at
    the rate of the last %(window)s, will %(end)s within %(hours)d hours (reported by
    {{ $labels.instance }}).
  ||| % {
    free: if what == 'disk' then 'free' else 'of its inodes free',
    end: if what == 'disk' then 'be full' else 'run out',
    window: std.strReplace(c.diskPredictionWindow, 'h', ' hours'),
    hours: hours,
  },
);

{
  prometheusAlerts+:: {
    groups+: [
      {
        local c = $._config,
        file:: 'disk.rules.yml',
        header:: |||
          Disks that tasks write to (e.g. CAPE's storage/analyses).

          Shape taken from the node-exporter mixin's filesystem alerts: filling up = low AND a linear
          prediction says full soon (warning: < %(w)d %% free and full within %(wh)dh; critical: < %(cr)d %% free,
          CAPE operators' "keep >= 20 %% free", and full within %(ch)dh), almost out = below a hard floor
          (< %(a)d %%), whatever the trend. A disk that is low but stable does not page.

          TaskmedicDiskSpaceLow (free < %(h)d %%) is severity info: a trigger for cleanup playbooks
          (cape-free-disk), never a page. Alertmanager's inhibit rules mute a warning while the
          critical alert of the same path fires, and any filling-up alert while almost-out fires.
        ||| % {
          w: c.diskFreeWarningPercent,
          wh: c.diskFreeWarningHorizonHours,
          cr: c.diskFreeCriticalPercent,
          ch: c.diskFreeCriticalHorizonHours,
          a: c.diskAlmostOutPercent,
          h: c.diskHousekeepingPercent,
        },
        name: 'taskmedic-disk',
        rules: [
          lib.alert(
            c,
            'TaskmedicDiskSpaceLow',
            |||
              taskmedic_disk_free_ratio{%(exporterSelector)s} < %(ratio)s
            ||| % (c { ratio: lib.ratio(c.diskHousekeepingPercent) }),
            c.diskHousekeepingFor,
            'info',
            '{{ $labels.path }}: only {{ $value | humanizePercentage }} disk space free',
            |||
              Filesystem holding {{ $labels.path }} has {{ $value | humanizePercentage }} free, below
              the %d %% housekeeping line (reported by {{ $labels.instance }}). A cleanup playbook
              (cape-free-disk for CAPE's storage) removes old analyses; people are paged only if the disk
              keeps filling up or is almost out.
            ||| % c.diskHousekeepingPercent,
          ),
          fillingUp(c, 'TaskmedicDiskFillingUp', 'taskmedic_disk_free_ratio', 'taskmedic_disk_free_bytes', 'disk',
                    c.diskFreeWarningPercent, c.diskFreeWarningHorizonHours, 'warning'),
          fillingUp(c, 'TaskmedicDiskFillingUp', 'taskmedic_disk_free_ratio', 'taskmedic_disk_free_bytes', 'disk',
                    c.diskFreeCriticalPercent, c.diskFreeCriticalHorizonHours, 'critical'),
          lib.alert(
            c,
            'TaskmedicDiskAlmostOutOfSpace',
            |||
              taskmedic_disk_free_ratio{%(exporterSelector)s} < %(ratio)s
            ||| % (c { ratio: lib.ratio(c.diskAlmostOutPercent) }),
            c.diskAlmostOutFor,
            'critical',
            '{{ $labels.path }}: almost out of disk space ({{ $value | humanizePercentage }} free)',
            |||
              Filesystem holding {{ $labels.path }} has only {{ $value | humanizePercentage }} free
              (below %d %%, reported by {{ $labels.instance }}). Writes will start failing; databases
              and analyses may be corrupted.
            ||| % c.diskAlmostOutPercent,
          ),
          fillingUp(c, 'TaskmedicDiskInodesFillingUp', 'taskmedic_disk_inodes_free_ratio', 'taskmedic_disk_inodes_free_ratio',
                    'inodes', c.diskFreeWarningPercent, c.diskFreeWarningHorizonHours, 'warning'),
          fillingUp(c, 'TaskmedicDiskInodesFillingUp', 'taskmedic_disk_inodes_free_ratio', 'taskmedic_disk_inodes_free_ratio',
                    'inodes', c.diskFreeCriticalPercent, c.diskFreeCriticalHorizonHours, 'critical'),
          lib.alert(
            c,
            'TaskmedicDiskAlmostOutOfInodes',
            |||
              taskmedic_disk_inodes_free_ratio{%(exporterSelector)s} < %(ratio)s
            ||| % (c { ratio: lib.ratio(c.diskAlmostOutPercent) }),
            c.diskAlmostOutFor,
            'critical',
            '{{ $labels.path }}: almost out of inodes ({{ $value | humanizePercentage }} free)',
            |||
              Filesystem holding {{ $labels.path }} has only {{ $value | humanizePercentage }} of its
              inodes free (below %d %%, reported by {{ $labels.instance }}). Creating files will fail
              even with bytes to spare: usually millions of small analysis files.
            ||| % c.diskAlmostOutPercent,
          ),
        ],
      },
    ],
  },
}
