"""The trainer's error and warning: a misuse says its fix; an override says what won."""

from __future__ import annotations

from handyjobs.errors import HandyjobsError


class TrainerError(HandyjobsError):
    """A misuse of ParallelTrainer (wrong launch, device or argument); the message says the fix."""


class TrainerWarning(UserWarning):
    """Something in the configuration was overridden by what the launcher actually started."""
