local lib = import '../lib.libsonnet';

{
  prometheusAlerts+:: {
    groups+: [
      {
        local c = $._config,
        file:: 'tasks.rules.yml',
        header:: |||
          Stuck and waiting tasks, from the exporter's task collectors.

          What counts as "stuck" (pending longer than X, running past its timeout, process gone,
          unacked past the visibility timeout, abandoned in the RQ started registry, held by a job
          engine's worker that is dead by the engine's own evidence) is decided by the exporter's profile
          for each system and exported as taskmedic_stuck_tasks{system,status,reason}; change those
          thresholds in the exporter config, not here. Every (system,status,reason) series is always
          exported (0 when nothing is stuck), so `> 0` resolves cleanly.

          The remediator's playbooks match alertname=TaskmedicStuckTasks plus system, status and reason,
          so those labels are never aggregated away, and each (system,status,reason) series gives exactly
          one TaskmedicStuckTasks alert (Celery's unacked_too_long, RQ's abandoned and the job engines'
          status="held" included: Dramatiq and arq worker_gone, BullMQ stalled, Sidekiq expiring).
          Sidekiq's expiring work is lost a minute after its worker dies, long before this alert's
          `for`: TaskmedicHeldWorkExpiring (engines.rules.yml) fires on it at once.
          Alertmanager sends the alerts a playbook heals to the remediator only; TaskmedicStuckTasksNotHealed
          pages people when the same series is still stuck after the healing window.
        |||,
        name: 'taskmedic-tasks',
        rules: [
          lib.alert(
            c,
            'TaskmedicStuckTasks',
            |||
              taskmedic_stuck_tasks{%(exporterSelector)s} > 0
            ||| % c,
            c.stuckTasksFor,
            'warning',
            '{{ $labels.system }}: {{ $value }} task(s) stuck in {{ $labels.status }} ({{ $labels.reason }})',
            |||
              {{ $value }} task(s) of system {{ $labels.system }} in status {{ $labels.status }} are
              stuck for reason {{ $labels.reason }} (reported by {{ $labels.instance }}):
              {{ if eq $labels.reason "pending_too_long" }}they have waited longer than the profile's pending threshold; workers do not pick them up.
              {{- else if eq $labels.reason "running_too_long" }}they have run longer than their timeout plus grace; the worker died or hangs.
              {{- else if eq $labels.reason "process_gone" }}the process that ran them no longer exists; they are zombies holding concurrency slots.
              {{- else if eq $labels.reason "heartbeat_lost" }}their worker stopped sending heartbeats.
              {{- else if eq $labels.reason "worker_gone" }}no live worker has them in progress: the worker (pool, process) holding them stopped heartbeating, its health-check key expired or it is no longer registered.
              {{- else if eq $labels.reason "processing_stalled" }}their analysis finished but the processor has not picked them up within the profile's threshold; CAPE's processing (utils/process.py) is down or hung, so recent analyses stop updating.
              {{- else if eq $labels.reason "no_progress" }}their engine process is alive but has gained no CPU time within the profile's progress window; it hangs.
              {{- else if eq $labels.reason "unacked_too_long" }}Celery delivered them to a worker that never acknowledged them within the visibility timeout; kombu only restores them when a consumer runs its restore pass.
              {{- else if eq $labels.reason "abandoned" }}they sit in RQ's started registry past their expiry; the worker that ran them is gone and nothing will finish them.
              {{- else if eq $labels.reason "stalled" }}they are active but their lock expired: the worker running them died, and only a live worker's stalled-job check moves them back to wait.
              {{- else if eq $labels.reason "expiring" }}their worker process stopped beating, and the only copy of each job it ran expires with its keys 60 s after its last beat (Sidekiq's hash of running jobs); TaskmedicHeldWorkExpiring fires on them at once.
              {{- else }}see the exporter's profile for this reason.{{ end }}
              A playbook matching system={{ $labels.system }}, reason={{ $labels.reason }} heals them
              when one is configured; otherwise follow the runbook.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicStuckTasksNotHealed',
            |||
              taskmedic_stuck_tasks{%(exporterSelector)s} > 0
            ||| % c,
            c.stuckTasksNotHealedFor,
            'critical',
            '{{ $labels.system }}: {{ $value }} task(s) still stuck in {{ $labels.status }} ({{ $labels.reason }}) after %s' % c.stuckTasksNotHealedFor,
            |||
              {{ $value }} task(s) of system {{ $labels.system }} in status {{ $labels.status }} have been
              stuck for reason {{ $labels.reason }} for more than %s (reported by {{ $labels.instance }}).
              If a playbook handles system={{ $labels.system }}, reason={{ $labels.reason }}, it did not heal
              them: it failed, was refused, is paused, dry-run or suppressed, or the tasks keep getting stuck
              again. GET /runs on the remediator shows what it did.
            ||| % c.stuckTasksNotHealedFor,
          ),
          lib.alert(
            c,
            'TaskmedicOldestPendingTaskTooOld',
            |||
              taskmedic_task_oldest_age_seconds{%(exporterSelector)s, status=~"%(waitingStatusRegex)s"} > %(threshold)s
            ||| % (c { threshold: lib.secondsExpr(c.oldestPendingSeconds) }),
            c.oldestPendingFor,
            'warning',
            '{{ $labels.system }}: oldest {{ $labels.status }} task has waited {{ $value | humanizeDuration }}',
            |||
              The oldest task of system {{ $labels.system }} in status {{ $labels.status }} has been
              waiting for {{ $value | humanizeDuration }} (threshold %s). Workers are not picking up
              work: full disk, dead workers, or a concurrency limit eaten by stuck tasks.
            ||| % lib.duration(c.oldestPendingSeconds),
          ),
          lib.alert(
            c,
            'TaskmedicJudgementUntrusted',
            |||
              taskmedic_judgement_trusted{%(exporterSelector)s} == 0
            ||| % c,
            c.judgementUntrustedFor,
            'warning',
            '{{ $labels.system }}: stuck tasks cannot be judged; the remediator refuses to act on it',
            |||
              The exporter cannot judge the tasks of system {{ $labels.system }} from their evidence
              (reported by {{ $labels.instance }}): no Celery worker answers over the broker, live rows
              are dated in the future (taskmedic_clock_skew_seconds: timestamps read in the wrong zone), or
              a job engine's worker holds work while its heartbeat is missing or ahead of Redis' clock.
              Its stuck counts may read 0 while tasks are stuck, and the remediator refuses to act on what
              it cannot judge until this resolves. The exporter's log (tasks) or the runbook (engines) says which.
            |||,
          ),
        ],
      },
    ],
  },
}
