"""params.yaml `report:`."""

from __future__ import annotations

from finetune.config.section import Section


class ReportParams(Section):
    title: str = "Fine-tuning report"
