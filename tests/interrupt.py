"""Stopping a training run right after a given optimizer step, as a user's Ctrl-C (SIGINT) or a crash would."""

from __future__ import annotations

import signal

import pytest

from mtl_train.engine.trainer import Trainer


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int, how: str = "signal") -> None:
    """Make training stop right after optimizer step ``step``: by SIGINT (``how="signal"``: the run flushes, saves a
    checkpoint and raises TrainingInterrupted) or by a crash (``how="crash"``: a RuntimeError, nothing saved)."""
    original = Trainer.train_step

    def train_step(self, inputs, targets, share=1.0):
        result = original(self, inputs, targets, share)
        if self.step + 1 == step:
            if how == "signal":
                signal.raise_signal(signal.SIGINT)
            else:
                raise RuntimeError("simulated crash")
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
