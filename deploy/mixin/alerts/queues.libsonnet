local lib = import '../lib.libsonnet';

{
  prometheusAlerts+:: {
    groups+: [
      {
        local c = $._config,
        file:: 'queues.rules.yml',
        header:: |||
          Broker queues (Celery lists incl. priority sub-queues, RQ rq:queue:<name>, Harbor job lists,
          and the job engines' queues: Dramatiq dramatiq:<queue>, BullMQ bull:<queue>:wait, Sidekiq
          queue:<name>, arq arq:queue). Work a worker holds is taskmedic_queue_unacked, not depth.

          "Not draining" is deriv() >= 0 over the window: a large backlog that consumers are working
          through (negative slope) is slow but healthy and does not fire.
        |||,
        name: 'taskmedic-queues',
        rules: [
          lib.alert(
            c,
            'TaskmedicQueueBacklogNotDraining',
            |||
              taskmedic_queue_depth{%(exporterSelector)s} > %(queueBacklogMessages)d
              and
              deriv(taskmedic_queue_depth{%(exporterSelector)s}[%(queueBacklogWindow)s]) >= 0
            ||| % c,
            c.queueBacklogFor,
            'warning',
            '{{ $labels.system }}/{{ $labels.queue }}: {{ $value }} messages waiting and not draining',
            |||
              Queue {{ $labels.queue }} of system {{ $labels.system }} holds {{ $value }} messages
              (threshold %(queueBacklogMessages)d) and has not shrunk over the last %(window)s. Consumers are missing,
              dead, too few, or all busy with stuck tasks.
            ||| % (c { window: std.strReplace(std.strReplace(c.queueBacklogWindow, 'm', ' minutes'), 'h', ' hours') }),
          ),
          lib.alert(
            c,
            'TaskmedicQueueOldestMessageTooOld',
            |||
              taskmedic_queue_oldest_age_seconds{%(exporterSelector)s} > %(threshold)s
            ||| % (c { threshold: lib.secondsExpr(c.queueOldestSeconds) }),
            c.queueOldestFor,
            'warning',
            '{{ $labels.system }}/{{ $labels.queue }}: oldest message waiting {{ $value | humanizeDuration }}',
            |||
              The oldest message in queue {{ $labels.queue }} of system {{ $labels.system }} has been
              waiting {{ $value | humanizeDuration }} (threshold %s). Queue latency that high means
              nothing consumes this queue.
            ||| % lib.duration(c.queueOldestSeconds),
          ),
        ],
      },
    ],
  },
}
