"""Training: schedules (:mod:`.config`, :mod:`.schedule`), resumable data order (:mod:`.sampler`),
process groups (:mod:`.distributed`), checkpoints (:mod:`.checkpoint`), the loop (:mod:`.train`)
and dataset inference (:mod:`.inference`)."""

from .config import SCHEDULES, TrainConfig, with_overrides
from .schedule import lr_at

__all__ = ["SCHEDULES", "TrainConfig", "lr_at", "with_overrides"]
