"""BayesAgg-MTL (Achituve et al., ICML 2024), the composer: per-task Gaussian gradient moments from the
head posteriors, combined per sample and dimension with weights ∝ 1/σ²^s (paper Eq. 9). State lives in
the parts: `RegressionPart`, `ClassificationGroup` (a binary set / a multiclass head), `RowStaging`.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import (
    Aggregator,
    AggregatorInputs,
    RepresentationAggregation,
    TaskLayout,
    labelled_samples,
    peek_seeds,
    sum_of_losses_gradient,
)
from keras_bayesagg.aggregators.bayesagg import epoch_statistics, evidence_log, memory
from keras_bayesagg.aggregators.bayesagg.classification_part import (
    ClassificationGroup,
    classification_groups,
    group_holding,
)
from keras_bayesagg.aggregators.bayesagg.kronecker_group import KroneckerGroup
from keras_bayesagg.aggregators.bayesagg.options import BayesAggOptions
from keras_bayesagg.aggregators.bayesagg.posterior_faults import posterior_faults
from keras_bayesagg.aggregators.bayesagg.predictive_part import PredictivePart, PredictiveServing
from keras_bayesagg.aggregators.bayesagg.regression_part import RegressionPart
from keras_bayesagg.aggregators.bayesagg.row_staging import RowStaging
from keras_bayesagg.bayes.aggregation import inverse_variance_aggregate
from keras_bayesagg.tasks import Regression

INITIAL_AUTO_PRIOR_VARIANCE = 0.005  # the paper's γ, where the evidence iteration starts


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class BayesAgg(PredictiveServing, Aggregator):
    """BayesAgg-MTL for any mix of `Regression`, `Binary` and `Multiclass` tasks.

    Args:
        prior_variance: γ of the prior N(0, γI) of the full-data posterior, or "auto": chosen at
            each refresh by the evidence (MacKay's fixed point), per group — the regression tasks
            together, each binary output, each multiclass head — starting from 0.005 and then
            from the last choice (`chosen_prior_variances()`, logged as `prior_variance/<group>`).
        regression_power: s_reg ∈ (0, 1], the power of regression gradient variances.
        classification_power: s_cls ∈ (0, 1], the power of classification gradient variances.
        num_samples: S, Monte Carlo draws of classification head weights per step.
        moments: "exact" (default): binary outputs and 2-class heads get exact gradient moments
            (one-dimensional Gaussian integrals by quadrature: no draws, no noise); multiclass
            heads with more classes use Monte Carlo. "monte_carlo": the paper's estimator everywhere.
        warmup_epochs: epochs trained with linear scalarization before BayesAgg takes over.
        seed: seed of the Monte Carlo draws (same seed, same run; works under XLA).
        linalg_dtype: "float32" or "float64" for posteriors, factorizations and moments.
        feature_buffer_rows: rows of (h, labels) staged on the device for the classification prior
            (moved to host memory after steps); at least the rows of one `steps_per_execution` call.
        memory_limit_gb: refuse task layouts whose state and per-step work would take more
            (estimated before allocating; None: no check).
        multiclass_posterior: "full" (default, the paper): the GGN posterior of a C-class head, C(D+1)
            square; "kronecker": a Kronecker-factored one (memory O(C² + D²), docs/method.md) for heads of
            more than two classes, Monte Carlo moments in either case.
        kronecker_draws_per_rotation: K for the Kronecker posterior: 1 (the paper's independent draws), an even K
            dividing S (each class rotation of the noise serves K draws by sign flips in antithetic pairs: exact
            draws, unbiased and cheaper; far less noise in E[g], more in Var[g]), or "auto" (default): the smallest
            even divisor of S ≥ max(2, C/B) per head (1 for an odd S or the full posterior): an antithetic pair per
            rotation unless the rotations would dominate the step (docs/method.md step 7, docs/benchmarks.md).

    Missing labels and sample weights: each sample's weights α are normalized over its present task
    units, unit k's share of sample i is w_ik·α_ik (w: the sample weight, 0 for a missing label), and the
    aggregated gradient is averaged over Σ_i max_k w_ik (B when fully labelled and unweighted).

    Defaults follow the authors' UTKFace setting (γ = 0.005, s_reg = 0.3, s_cls = 0.1, S = 1024).
    """

    needs_task_gradients = True
    needs_epoch_hooks = True  # the full-data refresh runs at each epoch end
    computes_own_rows = True  # several replicas: each computes the moments of its own rows (docs/distributed.md)
    compile_bayesian_part = False  # True: one XLA cluster in graph-mode steps too (docs/benchmarks.md, issue 19)

    def __init__(
        self,
        prior_variance: float | str = 0.005,
        regression_power: float = 0.3,
        classification_power: float = 0.1,
        num_samples: int = 1024,
        moments: str = "exact",
        warmup_epochs: int = 1,
        seed: int | None = None,
        linalg_dtype: str = "float32",
        feature_buffer_rows: int = 8192,
        memory_limit_gb: float | None = 4.0,
        multiclass_posterior: str = "full",
        kronecker_draws_per_rotation: int | str = "auto",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.options = BayesAggOptions.validated(
            prior_variance=prior_variance,
            regression_power=regression_power,
            classification_power=classification_power,
            num_samples=num_samples,
            moments=moments,
            warmup_epochs=warmup_epochs,
            seed=seed,
            linalg_dtype=linalg_dtype,
            feature_buffer_rows=feature_buffer_rows,
            memory_limit_gb=memory_limit_gb,
            multiclass_posterior=multiclass_posterior,
            kronecker_draws_per_rotation=kronecker_draws_per_rotation,
        )
        for option, value in self.options.as_config().items():  # read as attributes everywhere (self.num_samples)
            setattr(self, option, value)
        self.seed_generator = keras.random.SeedGenerator(seed, name="bayesagg_seed")

    # ------------------------------------------------------------------ state
    def build_state(self, layout: TaskLayout) -> None:
        memory.refuse_for(self, None)
        dim = layout.representation_dim
        self.completed_epochs = self.add_weight(
            name="completed_epochs", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.epoch_steps = self.add_weight(
            name="epoch_steps", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        units = {name: task.units for name, task in layout.tasks.items()}
        regression = {name: units[name] for name in layout.names_of(Regression)}
        fixed = None if self.prior_variance == "auto" else self.prior_variance
        common = dict(
            dim=dim, prior_variance=fixed, dtype=self.linalg_dtype, initial_prior_variance=INITIAL_AUTO_PRIOR_VARIANCE
        )
        self.regression = RegressionPart(self, regression, **common) if regression else None
        draws = dict(
            multiclass_posterior=self.multiclass_posterior, draws_per_rotation=self.kronecker_draws_per_rotation
        )
        self.groups = classification_groups(self, layout, exact=self.moments == "exact", **draws, **common)
        self.regression_columns = layout.unit_columns(regression)
        self.staging = None
        if self.groups:
            self.staging = RowStaging(self.feature_buffer_rows, dim, sum(group.staged_columns for group in self.groups))
        # A Python tuple, not a tensor: the model may be built inside a traced step.
        self.unit_powers = tuple(
            self.regression_power if unit.task in regression else self.classification_power for unit in layout.units
        )
        self.predictive = PredictivePart(self, self.regression, self.groups, self.linalg_dtype)  # variables last
        if self.regression:
            self.regression.add_output_state()  # after the predictive part's: files without them still load
        binary_groups = [group for group in self.groups if isinstance(group, ClassificationGroup)]
        self.whitening_state = [v for group in binary_groups for v in group.add_whitening_state(self)]  # last of all

    def check_batch_size(self, batch_size: int) -> None:
        """The memory estimate at the batch size fit will use (the build-time check knew no batch); Kronecker
        heads resolve "auto" draws per rotation for it where the traced batch has no static size."""
        memory.refuse_for(self, batch_size)
        for group in self.groups:
            if isinstance(group, KroneckerGroup):
                group.expected_batch = int(batch_size)

    # ------------------------------------------------------------------ per step
    def aggregate(self, inputs: AggregatorInputs) -> RepresentationAggregation:
        if inputs.representation.shape[0] is not None:  # a static batch (traced once): its memory estimate
            self.check_batch_size(int(inputs.representation.shape[0]))
        features = tf.cast(inputs.representation, self.linalg_dtype)  # all rows: posteriors and collected statistics
        present = inputs.presence()
        targets = self.regression.targets(inputs.labels) if self.regression else None
        regression_present = tf.gather(present, tf.constant(self.regression_columns, tf.int32), axis=1)
        group_labels = [group.labels(inputs.labels) for group in self.groups]
        group_present = [group.presence(present) for group in self.groups]
        group_weights = [group.weights(inputs.head_weights) for group in self.groups]
        # Seeds are drawn every applied step (also in warm-up), so a run depends on its seed alone.
        seeds, advance_seeds = peek_seeds(self.seed_generator, len(self.groups))
        names = list(self.layout.tasks)
        own = inputs.own_rows  # several replicas: moments and aggregation of this replica's rows only
        samples = labelled_samples(present)  # of the global batch
        samples = tf.where(samples > 0.0, samples, tf.ones_like(samples))
        warming_up = self.completed_epochs < self.warmup_epochs

        def warmup() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            return own(sum_of_losses_gradient(inputs)), tf.zeros_like(inputs.losses), tf.zeros([len(names)], tf.bool)

        def bayesian() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            moments, task_ok = {}, {}
            if self.regression:
                regression_moments, ok = self.regression.moments(features, targets, regression_present, own)
                moments.update(regression_moments)
                task_ok.update({name: ok for name in regression_moments})
            parts = zip(self.groups, group_labels, group_present, group_weights, seeds)
            for group, labels, mask, weights, seed in parts:
                group_moments, group_ok = group.moments(features, labels, mask, weights, self.num_samples, seed, own)
                moments.update(group_moments)
                task_ok.update(group_ok)
            means = tf.cast(tf.concat([moments[name].mean for name in names], axis=1), tf.float32)
            own_present = own(present)
            combined = inverse_variance_aggregate(
                means,
                tf.cast(tf.concat([moments[name].variance for name in names], axis=1), tf.float32),
                tf.constant(self.unit_powers, tf.float32),
                own_present,
            )
            failed = tf.stack([~task_ok[name] for name in names])  # of the posteriors: the same on every replica
            # Sample i's share of unit k is w_ik·α_ik (a row of weight 2 counts twice), over Σ_i max_k w_ik samples.
            shares = combined.weights * own_present[:, :, None]
            gradient = tf.reduce_sum(shares * means, axis=1)
            return gradient / samples, tf.reduce_sum(tf.reduce_mean(shares, axis=2), axis=0), failed

        if self.compile_bayesian_part and not tf.executing_eagerly():  # eager steps would compile every call
            bayesian = tf.function(bayesian, jit_compile=True, autograph=False)
        gradient, share_sums, failed = tf.cond(warming_up, warmup, bayesian)
        # K·mean α over labelled samples: equal weights are ones, on the scale of the warm-up (linear scalarization).
        # The sums over rows are summed over replicas (outside the cond: a collective), so all log the same.
        bayesian_weights = self.layout.num_units * inputs.sum_over_replicas(share_sums) / samples
        weights = tf.where(warming_up, tf.ones_like(inputs.losses), bayesian_weights)
        staged = [tf.concat([labels, mask], axis=1) for labels, mask in zip(group_labels, group_present)]
        collect = epoch_statistics.step_writes(
            self, features, targets, regression_present, inputs.representation, staged
        )

        def commit() -> None:
            advance_seeds()
            collect()
            self.epoch_steps.assign_add(1)

        return RepresentationAggregation(
            objective=tf.reduce_sum(inputs.losses),
            representation_gradient=gradient,
            task_weights=weights,
            commit=commit,
            faults=posterior_faults(self.layout, failed),
        )

    # ------------------------------------------------------------------ per batch / per epoch
    def begin_epoch(self) -> None:
        """Start collecting this epoch's full-data statistics."""
        if not self.built:
            return
        self.epoch_steps.assign(0)
        if self.regression:
            self.regression.reset()
            self.predictive.reset()
        if self.staging:
            self.staging.reset()

    def end_batch(self) -> None:
        """Move staged rows to host memory when the next write might not fit."""
        if self.built and self.staging:
            self.staging.end_batch()

    def end_epoch(self, head_weights: Mapping[str, tf.Tensor]) -> None:
        """Turn this epoch's data into the prior of the next epoch (SPEC "full-data posterior").

        An epoch without applied steps changes nothing (it is not counted either). Earlier warm-up
        epochs skip the refresh: nothing uses their prior. Classification priors are the Newton
        posterior over all of the epoch's rows at `head_weights`, the heads' current weights.
        """
        if not isinstance(head_weights, Mapping):  # custom loops of version 0.1.0 passed the model
            head_weights.end_epoch()
            return
        if not self.built or int(self.epoch_steps.numpy()) == 0:
            return
        if int(self.completed_epochs.numpy()) + 1 >= self.warmup_epochs:  # earlier epochs' priors go unused
            epoch_statistics.refresh(self, head_weights)
        self.begin_epoch()  # the statistics are spent: an epoch's sums never outlive it
        self.completed_epochs.assign_add(1)

    def classification_group(self, task_name: str) -> ClassificationGroup:
        """The group (all binary outputs, or one multiclass head) that holds `task_name`'s prior."""
        return group_holding(self.groups, task_name)

    def chosen_prior_variances(self) -> dict[str, float]:
        """The evidence's γ per group after the last refresh (empty unless prior_variance="auto")."""
        if not self.built or self.prior_variance != "auto":
            return {}
        return evidence_log.chosen_prior_variances(self.regression, self.groups, self.layout)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [evidence_log.PriorVarianceLog(self)] if self.prior_variance == "auto" else []

    @property
    def overridden_heads(self) -> tuple[str, ...]:
        return tuple(self.regression.task_units) if self.built and self.regression else ()

    def head_overrides(self) -> dict[str, tf.Tensor]:
        """After warm-up the regression heads predict with the full-data posterior mean (no bias):
        the paper's prediction rule, used by evaluate, predict and export."""
        if not self.overridden_heads or int(self.completed_epochs.numpy()) < max(self.warmup_epochs, 1):
            return {}
        return self.regression.posterior_kernels()

    def later_output_state(self) -> list[keras.Variable]:
        """The per-output regression state (partly labelled data), created last."""
        return list(self.regression.output_state) if self.built and self.regression else []

    def variables_after_0_2_0(self) -> list[keras.Variable]:
        return self.whitening_state if self.built else []

    def later_version_variables(self) -> list[keras.Variable]:
        """The predictive part's variables, the per-output regression state (partly labelled data), then the
        binary groups' whitened priors."""
        return super().later_version_variables() + self.later_output_state() + self.variables_after_0_2_0()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.options.as_config()}
