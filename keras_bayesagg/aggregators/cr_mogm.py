"""CR-MOGM (Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond",
NeurIPS 2022): the task weights of any gradient-combination method, smoothed over the steps."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.aggregators.upgrad import UPGrad
from keras_bayesagg.validation import finite_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class CRMOGM(GradientCombination):
    """λ_t = α λ_{t-1} + (1 - α) λ̂_t, λ̂_t the weights `method` gives at step t, and d = Σ_k λ_t,k g_k.

    The paper's correction of stochastic gradient manipulation: averaging the weights over the steps makes
    the weights (hence the direction) a consistent estimate, where the per-batch weights of MGDA-like
    methods are biased. λ_0 = λ̂_1, so the first step is the method's own (as
    TorchJD's `CRMOGMWeighting`). α = 0 is `method` itself, α = 1 freezes the first step's weights.
    `method` must be a gradient combination whose direction is Σ_k w_k g_k (not TrimmedMean); its level is
    used, and its own state advances as it would alone. State: λ and whether it is set, written in
    `commit` with the method's. `task_weights` are λ_t.

    Args:
        method: the gradient-combination aggregator whose weights are smoothed (a new instance; default
            `UPGrad()`).
        alpha: α ∈ [0, 1], the weight of the past (0.9, TorchJD's default; the paper lets α_t grow to 1
            as the learning rate decays).
    """

    def __init__(
        self, method: GradientCombination | None = None, alpha: float = 0.9, name: str | None = None, **kwargs: Any
    ) -> None:
        if method is None:  # the default of TorchJD's example
            method = UPGrad()
        if isinstance(method, dict):
            method = keras.saving.deserialize_keras_object(method)
        if not isinstance(method, GradientCombination) or isinstance(method, CRMOGM) or not method.gram_only:
            raise ValueError(
                "CRMOGM: method must be a gradient-combination aggregator whose direction is Σ_k w_k g_k "
                f"(e.g. kb.aggregators.UPGrad()); got {method!r}."
            )
        kwargs.pop("level", None)
        super().__init__(level=method.level, name=name, **kwargs)
        self.method = method
        self.alpha = finite_float("CRMOGM", "alpha", alpha, low=0.0, high=1.0)

    def build_state(self, layout: TaskLayout) -> None:
        self.method.build_for(layout)
        self.smoothed_weights = self.add_weight(
            name="smoothed_weights", shape=(layout.num_units,), initializer="zeros", trainable=False
        )
        self.started = self.add_weight(name="started", shape=(), initializer="zeros", trainable=False)

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        proposed, method_commit = self.method.propose_weights(gram)
        proposed = tf.cast(proposed, tf.float32)
        previous = tf.where(self.started > 0.0, self.smoothed_weights, proposed)
        weights = self.alpha * previous + (1.0 - self.alpha) * proposed

        def commit() -> None:
            method_commit()
            self.method.last_task_weights.assign(proposed)
            self.smoothed_weights.assign(weights)
            self.started.assign(1.0)

        return weights, commit

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "method": keras.saving.serialize_keras_object(self.method), "alpha": self.alpha}
