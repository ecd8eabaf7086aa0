"""The exporter's own configuration: the shared model (systems, disks, backups) plus `exporter:`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from taskmedic.config.model import Backup, Disk, HttpLimits, Model, Name, System


class ExporterSettings(Model):
    listen: str = "0.0.0.0:9863"
    http: HttpLimits = HttpLimits()


class ExporterConfig(Model):
    """What `taskmedic-exporter` reads; the remediator's section is ignored."""

    systems: dict[Name, System] = Field(default_factory=dict)
    disks: list[Disk] = Field(default_factory=list)
    backups: dict[Name, Backup] = Field(default_factory=dict)
    exporter: ExporterSettings = ExporterSettings()
    remediator: Any = None

    @model_validator(mode="after")
    def _something(self) -> ExporterConfig:
        if not (self.systems or self.disks or self.backups):
            raise ValueError("nothing to watch: configure at least one of systems, disks, backups")
        return self
