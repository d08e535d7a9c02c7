"""BayesAgg's constructor options: validated once, in one message style, and written back into its config."""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_bayesagg import validation

LINALG_DTYPES = ("float32", "float64")
MOMENTS = ("exact", "monte_carlo")
MULTICLASS_POSTERIORS = ("full", "kronecker")
DRAWS_PER_ROTATION_EXPECTATION = '1, an even divisor of num_samples ({num_samples}) or "auto"'


def auto_draws_per_rotation(
    num_samples: int, multiclass_posterior: str, num_classes: int | None = None, batch: int | None = None
) -> int:
    """K of `kronecker_draws_per_rotation="auto"`: 1 unless the posterior is Kronecker and S is even; else the
    smallest even divisor of S that is at least max(2, C/B) (the largest even divisor of S if none is).

    Why: at a given S one antithetic pair per rotation (K = 2) gave the least error of the aggregated trunk
    gradient in all but one measured setting, and larger K add some error; but a rotation costs 2C²n FLOP and a
    draw's own forward and backward pass about 4BCn, so once C > 2B the rotations dominate the step. K ≥ C/B keeps
    them under half of the draws' cost; in the measurements that K had the least error per unit of step time
    (C = 1000, B = 128: K = 8; C = 100: K = 2; docs/benchmarks.md, "K and the aggregated gradient").
    Without C and B (before the head's batch is known) it is 2.
    """
    if multiclass_posterior != "kronecker" or num_samples % 2:
        return 1
    target = 2 if not num_classes or not batch else max(2, -(-num_classes // batch))
    even_divisors = [k for k in range(2, num_samples + 1, 2) if num_samples % k == 0]
    return min([k for k in even_divisors if k >= target], default=max(even_divisors))


def resolve_draws_per_rotation(
    given: int | str, num_samples: int, multiclass_posterior: str, num_classes: int | None, batch: int | None
) -> int:
    """K as a Kronecker head of `num_classes` draws with it on batches of `batch` rows: the whole number given, or
    "auto" resolved (`auto_draws_per_rotation`)."""
    if given == "auto":
        return auto_draws_per_rotation(num_samples, multiclass_posterior, num_classes, batch)
    return int(given)


@dataclasses.dataclass(frozen=True)
class BayesAggOptions:
    """The arguments of `kb.BayesAgg` in canonical form (see its docstring for what each means)."""

    prior_variance: float | str = 0.005
    regression_power: float = 0.3
    classification_power: float = 0.1
    num_samples: int = 1024
    moments: str = "exact"
    warmup_epochs: int = 1
    seed: int | None = None
    linalg_dtype: str = "float32"
    feature_buffer_rows: int = 8192
    memory_limit_gb: float | None = 4.0
    multiclass_posterior: str = "full"
    kronecker_draws_per_rotation: int | str = "auto"

    @classmethod
    def validated(cls, **given: Any) -> "BayesAggOptions":
        """Check every argument (a ValueError naming BayesAgg and the argument) and return them canonical."""
        options = cls(**given)
        prior_variance = options.prior_variance
        if prior_variance != "auto":
            prior_variance = validation.positive_float(
                "BayesAgg", "prior_variance", prior_variance, 'a finite number > 0 or "auto"'
            )
        num_samples = validation.whole_number("BayesAgg", "num_samples", options.num_samples)
        reuse = options.kronecker_draws_per_rotation
        if reuse != "auto":
            expectation = DRAWS_PER_ROTATION_EXPECTATION.format(num_samples=num_samples)
            bad = ValueError(f"BayesAgg: kronecker_draws_per_rotation must be {expectation}; got {reuse!r}.")
            try:
                reuse = validation.whole_number("BayesAgg", "kronecker_draws_per_rotation", reuse)
            except ValueError:
                raise bad from None
            if reuse != 1 and (reuse % 2 or num_samples % reuse):
                raise bad
        if reuse not in ("auto", 1) and options.multiclass_posterior != "kronecker":
            raise ValueError(
                'BayesAgg: kronecker_draws_per_rotation applies to multiclass_posterior="kronecker" only; got '
                f"kronecker_draws_per_rotation={reuse} with multiclass_posterior={options.multiclass_posterior!r}."
            )
        return cls(
            prior_variance=prior_variance,
            regression_power=validation.power("BayesAgg", "regression_power", options.regression_power),
            classification_power=validation.power("BayesAgg", "classification_power", options.classification_power),
            num_samples=num_samples,
            moments=validation.one_of("BayesAgg", "moments", options.moments, MOMENTS),
            warmup_epochs=validation.whole_number("BayesAgg", "warmup_epochs", options.warmup_epochs, minimum=0),
            seed=validation.optional_seed("BayesAgg", "seed", options.seed),
            linalg_dtype=validation.one_of("BayesAgg", "linalg_dtype", options.linalg_dtype, LINALG_DTYPES),
            feature_buffer_rows=validation.whole_number("BayesAgg", "feature_buffer_rows", options.feature_buffer_rows),
            memory_limit_gb=validation.optional_positive_float("BayesAgg", "memory_limit_gb", options.memory_limit_gb),
            multiclass_posterior=validation.one_of(
                "BayesAgg", "multiclass_posterior", options.multiclass_posterior, MULTICLASS_POSTERIORS
            ),
            kronecker_draws_per_rotation=reuse,
        )

    def as_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
