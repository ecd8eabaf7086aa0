local lib = import '../lib.libsonnet';

{
  prometheusAlerts+:: {
    groups+: [
      {
        local c = $._config,
        file:: 'engines.rules.yml',
        header:: |||
          Redis job engines described by configuration (`queues: {type: engine}`, profiles dramatiq,
          bullmq, sidekiq, arq): work a worker holds whose holder is dead by the engine's own evidence is
          taskmedic_stuck_tasks{status="held", reason=<the profile's reason>}, and TaskmedicStuckTasks
          (tasks.rules.yml) fires on it after %(stuck)s like on any other stuck task.

          Reason `expiring` cannot wait that long: a Sidekiq process keeps the only copy of each job it
          runs in a hash (<identity>:workers; <identity>:work from Sidekiq 6.5) that expires with its other
          keys 60 s after its last beat, and then the job is lost. TaskmedicHeldWorkExpiring fires at once (for: %(for)s), and this group is
          evaluated every %(interval)s whatever Prometheus' global evaluation_interval is. The rest of the
          path must be as quick: the exporter's interval for the system and its scrape interval a few
          seconds, and an Alertmanager route to the remediator with a group_wait of a few seconds
          (deploy/compose/alertmanager.yml has it, commented), where the sidekiq-capture-expiring-jobs
          playbook pushes the jobs back onto their queues.
        ||| % { stuck: c.stuckTasksFor, 'for': c.heldWorkExpiringFor, interval: c.heldWorkEvaluationInterval },
        name: 'taskmedic-engines',
        interval: c.heldWorkEvaluationInterval,
        rules: [
          lib.alert(
            c,
            'TaskmedicHeldWorkExpiring',
            |||
              taskmedic_stuck_tasks{%(exporterSelector)s, reason="expiring"} > 0
            ||| % c,
            c.heldWorkExpiringFor,
            'warning',
            '{{ $labels.system }}: {{ $value }} running job(s) of a dead worker are about to be lost',
            |||
              {{ $value }} job(s) of system {{ $labels.system }} are held by a worker process that
              stopped beating (reported by {{ $labels.instance }}). The engine keeps the only copy of a
              running job with the worker's keys, which expire soon after its last beat (Sidekiq: the
              process' hash of running jobs, 60 s after the last beat); then the job is lost, and nothing
              in the engine recovers it. The sidekiq-capture-expiring-jobs playbook pushes them back onto their
              queues within seconds when this alert is routed to the remediator; otherwise push them
              back by hand now (runbook).
            |||,
          ),
        ],
      },
    ],
  },
}
