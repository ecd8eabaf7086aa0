// Small helpers shared by the alert and dashboard files.
{
  // A `>-` folded YAML scalar: lines joined by single spaces.
  fold(text):: std.join(' ', [std.stripChars(l, ' ') for l in std.split(text, '\n') if std.stripChars(l, ' ') != '']),

  // 0.2 for 20 (percent -> Prometheus ratio).
  ratio(percent):: std.format('%g', percent / 100),

  // "26h", "30m", "45s" for a number of seconds.
  duration(seconds)::
    if seconds % 3600 == 0 then '%dh' % (seconds / 3600)
    else if seconds % 60 == 0 then '%dm' % (seconds / 60)
    else '%ds' % seconds,

  // "26 * 3600" for 93600, so expressions stay readable.
  secondsExpr(seconds)::
    if seconds % 3600 == 0 && seconds > 3600 then '%d * 3600' % (seconds / 3600) else '%d' % seconds,

  runbook(config, alertname):: config.runbookURLPattern % std.asciiLower(alertname),

  // One alerting rule with the annotations every taskmedic alert carries.
  alert(config, name, expr, duration, severity, summary, description):: {
    alert: name,
    expr: expr,
    'for': duration,
    labels: { severity: severity },
    annotations: {
      summary: summary,
      description: $.fold(description),
      runbook_url: $.runbook(config, name),
    },
  },
}
