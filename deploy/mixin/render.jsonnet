// What `python -m deploy.mixin.build` writes: one rules file per alert group, the dashboards.
local mixin = import 'mixin.libsonnet';
{
  rules: { [g.file]: { header: g.header, groups: [g] } for g in mixin.prometheusAlerts.groups },
  dashboards: mixin.grafanaDashboards,
}
