"""GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
NeurIPS 2020)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators.base import TaskLayout, peek_seed
from keras_bayesagg.validation import optional_seed


def graddrop_direction(gradients: tf.Tensor, uniforms: tf.Tensor, leak: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(d [N], the kept share of each ‖g_k‖² [K]) from gradients [K, N], U ~ U(0, 1) [N] and leak [K].

    Positive sign purity P = ½(1 + Σ_k g_k / Σ_k |g_k|) per coordinate (paper Eq. 1); a coordinate keeps
    the positive components when P > U and the negative ones when P < U (Algorithm 1, lines 10-15);
    task k lets a share leak_k of what is dropped through: d = Σ_k (ℓ_k + (1-ℓ_k) m_k) ⊙ g_k.
    """
    total = tf.reduce_sum(gradients, axis=0)
    magnitude = tf.reduce_sum(tf.abs(gradients), axis=0)
    purity = 0.5 * (1.0 + total / tf.where(magnitude > 0, magnitude, tf.ones_like(magnitude)))
    keep = tf.logical_or(
        tf.logical_and((purity > uniforms)[None], gradients > 0),
        tf.logical_and((purity < uniforms)[None], gradients < 0),
    )
    leak = leak[:, None]
    kept = (leak + (1.0 - leak) * tf.cast(keep, gradients.dtype)) * gradients
    squared_norms = tf.reduce_sum(tf.square(gradients), axis=1)
    share = tf.reduce_sum(kept * gradients, axis=1) / tf.where(squared_norms > 0, squared_norms, 1.0)
    return tf.reduce_sum(kept, axis=0), tf.where(squared_norms > 0, share, 1.0)


def leak_values(leak: float | Sequence[float]) -> float | tuple[float, ...]:
    """Validated leak: one share in [0, 1] for every task, or one per task unit."""
    values = (leak,) if isinstance(leak, (int, float)) else tuple(leak)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        raise ValueError(
            f"GradDrop: leak must be a number in [0, 1] or a list of them (one per task unit), got {leak!r}."
        )
    return float(values[0]) if isinstance(leak, (int, float)) else tuple(float(v) for v in values)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class GradDrop(GradientCombination):
    """Gradient sign dropout: per coordinate keep only the positive or only the negative task components.

    Which sign survives is drawn per coordinate with probability P of "positive", the share of the
    coordinate's gradient mass that is positive, so consistent coordinates are kept whole and conflicting
    ones are settled at random in proportion to their purity. f(P) = P (the paper's default). The
    direction is not a weighting of the gradients; `task_weights` report the share of each ‖g_k‖² that was
    kept, ⟨m_k ⊙ g_k, g_k⟩/‖g_k‖² (1 when nothing of task k was dropped).

    The paper inserts GradDrop at an activation layer and applies it there, which is level="representation"
    (every sample's coordinates are decided separately, as in TorchJD on the [K, B·D] matrix); level=
    "parameters" applies it to the trunk gradients as TorchJD and LibMTL do. The scale is the sum.

    Args:
        leak: share of each task's gradient that passes unmasked: one number for all task units or one per
            unit (paper ℓ_i; default 0, no leak).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        seed: seed of the uniform draws (stateless, as in PCGrad).
    """

    gram_only = False

    def __init__(
        self,
        leak: float | Sequence[float] = 0.0,
        level: str = "representation",
        seed: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.leak = leak_values(leak)
        self.seed = optional_seed("GradDrop", "seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed, name="graddrop_seed")

    def build_state(self, layout: TaskLayout) -> None:
        if isinstance(self.leak, tuple) and len(self.leak) != layout.num_units:
            raise ValueError(
                f"GradDrop: leak has {len(self.leak)} values but the model has {layout.num_units} task units "
                f"({', '.join(unit.name for unit in layout.units)})."
            )

    def propose_direction(
        self, gradients: tf.Tensor, coordinate_weights: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, Callable[[], Any]]:
        seed, advance = peek_seed(self.seed_generator)
        uniforms = tf.random.stateless_uniform(tf.shape(gradients)[1:], seed=tf.cast(seed, tf.int32))
        leak = tf.broadcast_to(tf.constant(self.leak, tf.float32), tf.shape(gradients)[:1])
        direction, kept_share = graddrop_direction(gradients, uniforms, leak)
        return direction, kept_share, advance

    def get_config(self) -> dict[str, Any]:
        leak = list(self.leak) if isinstance(self.leak, tuple) else self.leak
        return {**super().get_config(), "leak": leak, "seed": self.seed}
