"""How the model's state follows the aggregator compiled now, and the epoch hooks outside `fit`.

- `follow_aggregator` (at `compile`): heads the new aggregator does not override now get the prediction they
  make today folded into their kernel and bias (so they train on from it, never frozen); the heads' served state
  is handed to the aggregator, or cleared when the aggregator does not keep it up to date.
- `EpochHooks`: the epoch-end refresh runs once per epoch, before Keras validates (`MultiTaskModel.evaluate`
  finishes the pending epoch when `fit` validates) or at `on_epoch_end` without validation; `train_on_batch`
  loops get a warning, once, when an aggregator that needs epoch ends has taken many steps without one.
See docs/architecture.md ("Who owns which state").
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

STEPS_WITHOUT_EPOCH_END_WARNING = 1000  # train_on_batch steps before the warning (BayesAgg epochs are usually fewer)


def follow_aggregator(model: keras.Model, aggregator: Any) -> None:
    """At compile (model built): fold overrides the new aggregator does not keep, hand over the served state."""
    kept = set(aggregator.head_overrides()) if aggregator.built else set()
    for name, head in model.heads.items():
        if name not in kept:
            head.fold_override()
    served = {name: head.served for name, head in model.heads.items()}
    if not aggregator.writes_served_state:
        for state in served.values():
            if state is not None:
                state.ready.assign(0.0)
    aggregator.use_served_state(served)


class EpochHooks:
    """Per-model bookkeeping of the epoch hooks: one refresh per epoch, and the warning of loops without epochs."""

    def __init__(self) -> None:
        self.pending = False
        self.steps_without_epoch_end = 0
        self.warned = False

    def began(self) -> None:
        self.pending = True

    def ended(self) -> None:
        self.pending = False
        self.steps_without_epoch_end = 0

    def take_pending(self) -> bool:
        """True (once) when an epoch began and has not ended yet."""
        pending, self.pending = self.pending, False
        return pending

    def count_step(self, aggregator: Any) -> None:
        """After a `train_on_batch` step: warn once when epoch ends are missing for an aggregator that needs them."""
        self.steps_without_epoch_end += 1
        if (
            not self.warned
            and getattr(aggregator, "needs_epoch_hooks", False)
            and self.steps_without_epoch_end >= STEPS_WITHOUT_EPOCH_END_WARNING
        ):
            self.warned = True
            warnings.warn(
                f"{type(aggregator).__name__} has taken {self.steps_without_epoch_end} train_on_batch steps without an "
                "epoch end, so it never refreshes (BayesAgg stays in its warm-up: linear scalarization). In a loop "
                "without fit, call model.begin_epoch() before and model.end_epoch() after each pass over the data.",
                stacklevel=3,
            )


def is_fit_validation(model: keras.Model, callbacks: Any) -> bool:
    """True when `evaluate` is fit's validation: fit passes its own CallbackList, which holds the model's hooks."""
    from keras_bayesagg.callbacks import AggregatorHooks

    if not isinstance(callbacks, keras.callbacks.CallbackList):
        return False
    return any(isinstance(c, AggregatorHooks) and c.model is model for c in callbacks.callbacks)
