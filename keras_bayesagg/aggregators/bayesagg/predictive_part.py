"""BayesAgg's serving side: the epoch statistics the served noise variance needs, and the writes of the heads'
served state (`keras_bayesagg/served_state.py`) at each refresh.

The served state itself belongs to the model's heads (it is what `predict_with_uncertainty` reads, so it is in
`model.weights`); BayesAgg keeps only training-time sums: Σy² and the row count of the epoch, summed beside
Σhhᵀ and Σh·y (no extra pass over the data). At each refresh of the full-data posterior it writes, per head,
- regression: the noise variance σ² per output from the epoch's residuals and the posterior covariance per
  output (the shared Λ_F⁻¹, or output o's own after partly labelled data);
- classification: the covariance Σ = Λ⁻¹ of the group's full-data precision, split per head (binary outputs
  are blocks of the binary group), so serving is matrix products (XLA-compilable, no factorization per request).
  A Kronecker group's Σ goes as its factors (`predictive.FactoredCovariance`); the head's state keeps it in its
  own form (dense product, or factored; a full GGN's Σ into a factored state is projected, `served_state.py`).
Version 0.2.0 kept that served state among BayesAgg's variables (after Σy² and the row count): `legacy_shapes`
and `hand_over` load such files into the heads. Formulas: `keras_bayesagg.bayes.predictive`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators.bayesagg.regression_part import uniform_weights
from keras_bayesagg.bayes import predictive
from keras_bayesagg.bayes.linalg import inverse_from_cholesky, safe_cholesky


class PredictivePart:
    """Σy² and the row count of the epoch (variables owned by `owner`) and the served-state writes."""

    def __init__(self, owner: keras.layers.Layer, regression: Any, groups: Sequence[Any], dtype: str) -> None:
        self.regression, self.groups, self.dtype = regression, list(groups), dtype

        def state(name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
            return owner.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False)

        self.variables: list[keras.Variable] = []
        if regression is not None:
            outputs = sum(regression.task_units.values())
            self.target_square_sum = state("regression_target_square_sum", (outputs,))
            self.rows = state("regression_rows", ())
            self.variables += [self.target_square_sum, self.rows]
        self.served: dict[str, Any] = {}  # the heads' served states, handed over by the model

    def legacy_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the served variables version 0.2.0 kept here: noise variance, a covariance per group, ready."""
        shapes = [(self.regression.outputs,)] if self.regression is not None else []
        shapes += [tuple(group.prior_precision.shape) for group in self.groups]
        return shapes + [()]

    def collect(self, targets: tf.Tensor | None, present: tf.Tensor) -> list[Callable[[], Any]]:
        """The write that adds this step's Σ w y² and total weight Σ w (regression targets [B, O], 0 where the
        weight `present` [B, O] is 0; none without). With O > 1 outputs, a batch whose rows weigh outputs
        differently counts its weight per output (`RegressionPart.output_rows`) instead."""
        if self.regression is None:
            return []
        present = tf.cast(present, self.dtype)
        squares = tf.reduce_sum(tf.square(targets) * present, axis=0)  # Σ w y²
        if self.regression.outputs == 1:
            rows = tf.reduce_sum(present)
        else:  # the total weight of a batch on the shared path (one weight per row for all outputs)
            rows = tf.where(uniform_weights(present), tf.reduce_sum(present[:, 0]), 0.0)

        def write() -> None:
            self.target_square_sum.assign_add(squares)
            self.rows.assign_add(rows)

        return [write]

    def reset(self) -> None:
        if self.regression is not None:
            self.target_square_sum.assign(tf.zeros_like(self.target_square_sum))
            self.rows.assign(tf.zeros_like(self.rows))

    def refresh(self) -> None:
        """After the parts refreshed their posteriors from this epoch (before its sums are reset)."""
        noise = self._noise_variance() if self.regression is not None else None
        covariances = [self._covariance(group) if self._serves(group) else None for group in self.groups]
        self._write(noise, covariances)

    def hand_over(self, values: Sequence[np.ndarray]) -> None:
        """Write the served state a version 0.2.0 file kept here (`legacy_shapes` order) into the heads."""
        if float(values[-1]) <= 0.0:
            return  # never refreshed
        noise = tf.constant(values[0]) if self.regression is not None else None
        offset = 1 if self.regression is not None else 0
        covariances = [tf.constant(values[offset + index]) for index in range(len(self.groups))]
        self._write(noise, covariances)

    def _serves(self, group: Any) -> bool:
        return any(self.served.get(name) is not None for name in group.task_units)

    @staticmethod
    def _covariance(group: Any) -> Any:
        if getattr(group, "kronecker", False):  # Q diag(1/λ) Qᵀ, factored: each head's state takes it in its form
            basis = group.basis()
            inverse = tf.math.reciprocal(tf.convert_to_tensor(group.prior_precision))
            return predictive.FactoredCovariance(basis.classes, basis.features, inverse)
        whitening = getattr(group, "whitening", None)  # a binary set's cached inverse factor: no second factorization
        cached = whitening.covariance(tf.convert_to_tensor(group.prior_precision)) if whitening is not None else None
        if cached is not None:
            return cached
        factor, _ = safe_cholesky(tf.convert_to_tensor(group.prior_precision))  # the refresh checked it
        inverse = inverse_from_cholesky(factor)
        return 0.5 * (inverse + tf.linalg.matrix_transpose(inverse))

    def _write(self, noise: tf.Tensor | None, covariances: Sequence[tf.Tensor | None]) -> None:
        if self.regression is not None:
            part, start = self.regression, 0
            per_output = bool(part.output_state) and float(part.output_priors.numpy()) > 0
            for name, units in part.task_units.items():
                state = self.served.get(name)
                if state is not None:
                    if per_output:
                        covariance = part.output_prior_covariance[start : start + units]
                    else:
                        covariance = tf.tile(tf.convert_to_tensor(part.prior_covariance)[None], [units, 1, 1])
                    state.write(covariance, noise[start : start + units])
                start += units
        for group, covariance in zip(self.groups, covariances):
            start = 0
            for name, units in group.task_units.items():
                state = self.served.get(name)
                if state is not None and covariance is not None:
                    state.write(covariance if group.multiclass else covariance[start : start + units])
                start += units

    def _noise_variance(self) -> tf.Tensor:
        """σ² per regression output from the epoch's statistics; per output after partly labelled batches."""
        part = self.regression
        cross, squares = tf.convert_to_tensor(part.target_sum), tf.convert_to_tensor(self.target_square_sum)
        mean, rows = tf.convert_to_tensor(part.prior_mean), tf.convert_to_tensor(self.rows)
        if not (part.output_state and float(part.output_priors.numpy()) > 0):
            gram, covariance = tf.convert_to_tensor(part.gram_sum), tf.convert_to_tensor(part.prior_covariance)
            return predictive.regression_noise_variance(gram, cross, squares, rows, mean, covariance)
        variances = []
        for o in range(part.outputs):
            gram, output_rows, covariance = part.output_statistics(o)
            variances.append(
                predictive.regression_noise_variance(
                    gram, cross[:, o : o + 1], squares[o : o + 1], rows + output_rows, mean[o : o + 1], covariance
                )
            )
        return tf.concat(variances, axis=0)


class PredictiveServing:
    """The serving side of BayesAgg (a mixin of the aggregator, which owns `predictive`)."""

    predictive: PredictivePart

    def use_served_state(self, states: Mapping[str, Any]) -> None:
        """The model hands over its heads' served states (None for a head without one): refreshes write them."""
        super().use_served_state(states)
        if self.built:
            self.predictive.served = dict(states)

    @property
    def writes_served_state(self) -> bool:
        return True

    def later_version_variables(self) -> list[keras.Variable]:
        return list(self.predictive.variables) if self.built else []

    def uncertainty_missing(self) -> str | None:
        """Why BayesAgg has not written the heads' served state yet."""
        if not self.built:
            return "BayesAgg is not built yet: fit the model (past its warm-up) first."
        if int(self.completed_epochs.numpy()) >= max(self.warmup_epochs, 1):
            return (
                "BayesAgg's full-data posterior was refreshed by an older version (0.1.0) that kept no noise "
                "variance or posterior covariance (or the served state was cleared by compiling another "
                "aggregator); train one more epoch to compute them."
            )
        return (
            "BayesAgg has not refreshed a full-data posterior yet: it does at the end of the first epoch after "
            f"its warm-up (warmup_epochs={self.warmup_epochs}; completed epochs: {int(self.completed_epochs.numpy())})."
        )

    def load_own_variables(self, store: Any) -> None:
        # Version 0.2.0 kept the served state here, between Σy²/rows and the per-output regression state.
        stored = [key for key in store.keys() if str(key).isdigit()]
        own = self._trainable_variables + self._non_trainable_variables
        own = own[: len(own) - len(self.variables_after_0_2_0())]  # last: not in a 0.2.0 file
        legacy = self.predictive.legacy_shapes() if self.built else []
        if not self.built or len(stored) != len(own) + len(legacy):
            super().load_own_variables(store)
            return
        first = len(own) - len(self.later_output_state())  # Σy² and rows end just before
        remapped = {key: store[key] for key in store.keys() if not str(key).isdigit()}
        for index in range(len(own)):
            remapped[str(index)] = store[str(index if index < first else index + len(legacy))]
        values = [np.asarray(store[str(first + index)]) for index in range(len(legacy))]
        if [tuple(value.shape) for value in values] != [tuple(shape) for shape in legacy]:
            super().load_own_variables(store)  # not a 0.2.0 layout: the base class reports the mismatch
            return
        super().load_own_variables(remapped)
        self.predictive.hand_over(values)

    def later_output_state(self) -> list[keras.Variable]:
        return []

    def variables_after_0_2_0(self) -> list[keras.Variable]:
        """Variables created after the per-output regression state, which 0.2.0 files lack."""
        return []
