local lib = import '../lib.libsonnet';

{
  prometheusAlerts+:: {
    groups+: [
      {
        local c = $._config,
        local age = lib.duration(c.backupMaxAgeSeconds),
        file:: 'backups.rules.yml',
        header:: |||
          Backup directories (e.g. SysReptor's). The exporter judges the newest finished file: its
          size, modification time and validity (zip end-of-central-directory, gzip/tar.gz, pg_dump
          custom header); a file still being written (taskmedic_backup_in_progress 1) is not judged yet.
          It also exports the size of the previous file and the modification time of the newest file
          that checked valid (taskmedic_backup_last_valid_timestamp_seconds, 0 when there is none).

          A broken newest file fires TaskmedicBackupInvalid as soon as it is judged; a playbook
          (sysreptor-quarantine-broken-backup) may quarantine it and run the backup again, and
          TaskmedicBackupInvalidNotHealed pages when it is still invalid after the healing window. If
          nothing valid replaces it, TaskmedicBackupTooOld follows once the last valid backup is too old.
        |||,
        name: 'taskmedic-backups',
        rules: [
          lib.alert(
            c,
            'TaskmedicBackupTooOld',
            |||
              (
                time() - taskmedic_backup_last_valid_timestamp_seconds{%(exporterSelector)s} > %(threshold)s
                and
                taskmedic_backup_last_valid_timestamp_seconds{%(exporterSelector)s} > 0
              )
              or
              taskmedic_backup_last_valid_timestamp_seconds{%(exporterSelector)s} == 0
            ||| % (c { threshold: lib.secondsExpr(c.backupMaxAgeSeconds) }),
            c.backupMaxAgeFor,
            'critical',
            'Backup {{ $labels.backup }}: no valid backup in the last %s' % std.strReplace(age, 'h', ' hours'),
            |||
              {{ if eq $value 0.0 }}Backup {{ $labels.backup }} has no valid backup file at all{{ else }}The newest valid file of backup {{ $labels.backup }} is {{ $value | humanizeDuration }} old{{ end }}
              (threshold %s, reported by {{ $labels.instance }}). The backup job is not running,
              writes somewhere else, or every recent backup is broken.
            ||| % age,
          ),
          lib.alert(
            c,
            'TaskmedicBackupInvalid',
            |||
              taskmedic_backup_valid{%(exporterSelector)s} == 0
            ||| % c,
            c.backupInvalidFor,
            'critical',
            'Backup {{ $labels.backup }}: newest backup file is invalid',
            |||
              The newest file of backup {{ $labels.backup }} fails the format check (e.g. a zip without
              its end-of-central-directory record: the writer died before finishing), reported by
              {{ $labels.instance }} (valid = {{ $value }}). It cannot be restored; the last good
              backup is older.
            |||,
          ),
          lib.alert(
            c,
            'TaskmedicBackupInvalidNotHealed',
            |||
              taskmedic_backup_valid{%(exporterSelector)s} == 0
            ||| % c,
            c.backupInvalidNotHealedFor,
            'critical',
            'Backup {{ $labels.backup }}: newest backup still invalid after %s' % c.backupInvalidNotHealedFor,
            |||
              The newest file of backup {{ $labels.backup }} has failed the format check for more than
              %s (reported by {{ $labels.instance }}). If a playbook handles it (SysReptor: quarantine and
              back up again), it did not produce a valid backup: GET /runs on the remediator shows why.
            ||| % c.backupInvalidNotHealedFor,
          ),
          lib.alert(
            c,
            'TaskmedicBackupShrunk',
            // A file still being written is small by nature and is left out until it is finished.
            |||
              taskmedic_backup_size_bytes{%(exporterSelector)s} < %(ratio)g * taskmedic_backup_previous_size_bytes{%(exporterSelector)s}
              unless on (backup, instance, job)
              taskmedic_backup_in_progress{%(exporterSelector)s} == 1
            ||| % (c { ratio: c.backupShrunkRatio }),
            c.backupShrunkFor,
            'warning',
            'Backup {{ $labels.backup }}: newest backup is less than %s the previous one' %
            (if c.backupShrunkRatio == 0.5 then 'half' else '%g %%' % (c.backupShrunkRatio * 100) + ' of'),
            |||
              The newest file of backup {{ $labels.backup }} is {{ $value | humanize1024 }}B, less than
              %g %% of the previous backup (reported by {{ $labels.instance }}). A backup cut short
              (timeout, killed process) or data deleted since the last backup.
            ||| % (c.backupShrunkRatio * 100),
          ),
        ],
      },
    ],
  },
}
