"""Training's schedule: the learning rate along a run, and the convergence rule that ends a run
trained with `until_gain_db` (a plateau of the training PSNR, then a cooldown)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import TrainSpec


AUTO_LR = 1e-3       # the peak lr of `train.lr: auto` for models up to AUTO_LR_WIDTH channels (c2)
AUTO_LR_WIDTH = 32
# Why it falls with the width: Adam moves every weight by about lr a step, so a layer's output
# moves by about lr·fan-in, and wider models need a smaller lr for the same step. At 256² (c2 61)
# 1e-3 made the training PSNR fall during the peak phase and 5e-4 gave +5.6 dB after 50 epochs,
# where at 128² (c2 26) 1e-3 beat 5e-4 by 0.7 dB (docs/benchmarks.md, stop 20).


def peak_lr(cfg: TrainSpec, c2: int) -> float:
    """The run's peak lr: `train.lr`, or for `auto` AUTO_LR · min(1, AUTO_LR_WIDTH / c2)."""
    if cfg.lr != "auto":
        return cfg.lr
    return AUTO_LR * min(1.0, AUTO_LR_WIDTH / c2)


def learning_rate(cfg: TrainSpec, peak: float, progress: float, cooldown: float | None = None) -> float:
    """lr at `progress` ∈ [0, 1] of the run: linear warm-up to `peak`, then cosine to final_lr·peak.

    With `until_gain_db` (train to convergence) the schedule is warm-up, stable, decay instead:
    lr stays at its peak after the warm-up until a cooldown starts (`Cooldown`), and `cooldown`
    ∈ [0, 1] is how far along it is; over it lr falls by the same cosine.
    """
    if cfg.schedule == "constant":
        return peak
    if progress < cfg.warmup and (cooldown is None or not cfg.until_gain_db):
        return peak * max(progress / cfg.warmup, 1e-3)
    if cfg.until_gain_db:
        if cooldown is None:
            return peak
        t = cooldown
    else:
        t = (progress - cfg.warmup) / (1 - cfg.warmup)
    return peak * (cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclass(frozen=True)
class Cooldown:
    """The lr decay that ends a run trained to convergence: from `start` for `length` seconds.

    It starts when the training PSNR plateaus (`plateaued`), lasting `train.cooldown_share` of the
    time trained so far, or at LATEST_COOLDOWN of the run's cap at the latest, lasting the rest: a
    plateau at the peak lr is not convergence (it was, on the grid preset, after 3 minutes at
    21 dB), so every run ends with its lr decayed, and stops when the cooldown is over.
    """

    start: float
    length: float

    def progress(self, elapsed: float) -> float:
        return (elapsed - self.start) / max(self.length, 1e-9)


LATEST_COOLDOWN = 0.8


PLATEAU_WINDOW = 5  # epochs averaged at each end of the last quarter: one epoch's PSNR is noisy


def plateaued(history: list[tuple[float, float]], gain_db: float) -> bool:
    """Whether the (seconds, PSNR) history gained less than `gain_db` over its last quarter of
    training time: the mean PSNR of the last PLATEAU_WINDOW epochs against that of the
    PLATEAU_WINDOW epochs up to three quarters of the time."""
    now = history[-1][0]
    earlier = [psnr for seconds, psnr in history if seconds <= 0.75 * now]
    if len(earlier) < PLATEAU_WINDOW or len(history) - len(earlier) < PLATEAU_WINDOW:
        return False
    recent = [psnr for _, psnr in history[-PLATEAU_WINDOW:]]
    return sum(recent) / PLATEAU_WINDOW - sum(earlier[-PLATEAU_WINDOW:]) / PLATEAU_WINDOW < gain_db
