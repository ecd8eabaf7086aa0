// The overview dashboard. Its panels are kept as Grafana JSON (edit in Grafana, export, save
// here); the mixin sets what _config decides: tags and timezone.
{
  grafanaDashboards+:: {
    'taskmedic-overview.json': (import 'taskmedic-overview.json') {
      tags: $._config.dashboardTags,
      timezone: $._config.dashboardTimezone,
    },
  },
}
