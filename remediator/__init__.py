"""taskmedic remediator: Alertmanager webhook → matching playbooks → journal → guarded steps → audit.

Data path, one module per stage: `webhook` (payload schema, auth) → `matching` (labels, state)
→ `journal` (exactly-once rows, leases) → `worker` (claim, guards) → `engine` (precheck, steps
from `steps/`, commit or roll back, verify) → the journal row and `/runs` as the audit trail.
"""
