"""The learning rate as a pure function of the iteration (no scheduler state to checkpoint).

Step decay times warmup, as mmcv's ``StepLrUpdaterHook`` with ``by_epoch=False`` (the hook behind
mmdetection's ``lr_config = dict(policy="step", warmup="linear", ...)``): at 0-based iteration ``i``

* regular lr ``= lr * gamma ** #{s in steps : i >= s}``;
* while ``i < warmup_iters``: ``linear`` multiplies it by ``1 - (1 - i / warmup_iters) * (1 - ratio)``
  (from ``ratio`` at i = 0 towards 1), ``constant`` by ``ratio``; ``none`` leaves it.
"""

from __future__ import annotations

from bisect import bisect_right

from .config import TrainConfig


def lr_at(cfg: TrainConfig, iteration: int) -> float:
    """Learning rate of the (0-based) iteration ``iteration``."""
    lr = cfg.lr * cfg.gamma ** bisect_right(cfg.steps, iteration)
    if cfg.warmup == "none" or iteration >= cfg.warmup_iters:
        return lr
    if cfg.warmup == "constant":
        return lr * cfg.warmup_ratio
    return lr * (1 - (1 - iteration / cfg.warmup_iters) * (1 - cfg.warmup_ratio))
