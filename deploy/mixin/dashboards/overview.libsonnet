// The overview dashboard. Its panels are kept as Grafana JSON (taskmedic-overview.json) whose
// PromQL writes the scrape selectors as %(exporterSelector)s / %(remediatorSelector)s; the mixin
// fills them from _config, hides the cluster variable unless showMultiCluster, and sets tags.
local fill(c, expr) = expr % c;

// Red lines where the alerts fire, from the same _config values.
local thresholds(c, panel) =
  if panel.title == 'Age of the newest valid backup' then
    [{ color: 'green', value: null }, { color: 'red', value: c.backupMaxAgeSeconds }]
  else if panel.title == 'Disk free' then
    [{ color: 'red', value: null },
     { color: 'orange', value: c.diskFreeCriticalPercent / 100 },
     { color: 'green', value: c.diskFreeWarningPercent / 100 }]
  else null;

local withSelectors(c, panel) = panel + {
  [if thresholds(c, panel) != null then 'fieldConfig']+: { defaults+: { thresholds+: { steps: thresholds(c, panel) } } },
  [if 'targets' in panel then 'targets']: [
    t + (if 'expr' in t then { expr: fill(c, t.expr) } else {})
    for t in panel.targets
  ],
  [if 'panels' in panel then 'panels']: [withSelectors(c, p) for p in panel.panels],
};

{
  grafanaDashboards+:: {
    local c = $._config,
    local board = import 'taskmedic-overview.json',
    'taskmedic-overview.json': board {
      tags: c.dashboardTags,
      timezone: c.dashboardTimezone,
      panels: [withSelectors(c, p) for p in board.panels],
      annotations+: {
        list: [a + (if 'expr' in a then { expr: fill(c, a.expr) } else {}) for a in board.annotations.list],
      },
      templating+: {
        list: [
          v + (if v.type == 'query' then { query: fill(c, v.query), definition: fill(c, v.definition) } else {})
            + (if v.name == 'cluster' then { hide: if c.showMultiCluster then 0 else 2 } else {})
          for v in board.templating.list
        ],
      },
    },
  },
}
