"""How much memory BayesAgg's state and one step take, estimated from the task layout.

Checked before any variable is allocated (at a one-sample step: the batch is not known yet) and again
before fit trains, at the batch size it will see, so a layout that would exhaust memory is refused with
a message that says what it would take, the largest batch that fits and which knob lowers it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.aggregators.bayesagg.options import resolve_draws_per_rotation
from keras_bayesagg.bayes import kronecker
from keras_bayesagg.tasks import Binary, Multiclass, Regression

GIB = 2.0**30


class MemoryItem(NamedTuple):
    what: str
    bytes: float
    knob: str


def estimate(
    layout: TaskLayout,
    num_samples: int,
    itemsize: int,
    batch: int,
    multiclass_posterior: str = "full",
    draws_per_rotation: int | str = 1,
) -> list[MemoryItem]:
    """State plus per-step working memory of each group of tasks, in bytes (dominant terms)."""
    dim, width = layout.representation_dim, layout.representation_dim + 1
    items = []
    outputs = sum(task.units for task in layout.tasks.values() if isinstance(task, Regression))
    if outputs:
        # Three D×D state matrices, the D×D posterior of a step with B >= D, the rank-B update otherwise;
        # with O > 1 outputs, three [O, D, D] arrays for partly labelled data (per-output grams and priors).
        per_output = 3 * outputs * dim * dim if outputs > 1 else 0
        items.append(
            MemoryItem(
                "regression tasks",
                itemsize * (5 * dim * dim + per_output + 3 * batch * dim + 2 * outputs * dim),
                "a smaller representation dimension D",
            )
        )
    binary = sum(task.units for task in layout.tasks.values() if isinstance(task, Binary))
    if binary:
        blocks = binary * width * width * 6  # prior, its cached inverse factor, GGN, precision, factor, served
        draws = 3 * binary * (width + batch) * num_samples  # sampled weights and residuals
        items.append(MemoryItem("binary tasks", itemsize * (blocks + draws), "fewer num_samples or a smaller D"))
    for name, task in layout.tasks.items():
        if isinstance(task, Multiclass) and multiclass_posterior == "kronecker" and task.num_classes > 2:
            items.append(_kronecker_item(name, task.num_classes, dim, num_samples, itemsize, batch, draws_per_rotation))
        elif isinstance(task, Multiclass):
            classes, size = task.num_classes, task.num_classes * width
            pairs = classes * (classes + 1) // 2
            matrices = 6 * size * size  # prior, class grams, GGN, precision, factor, served covariance
            draws = num_samples * (2 * size + pairs * dim + batch * (pairs + 2 * classes))
            items.append(
                MemoryItem(
                    f"multiclass task '{name}' ({classes} classes)",
                    itemsize * (matrices + draws),
                    'multiclass_posterior="kronecker" (memory O(C² + D²)), fewer num_samples (per-step memory '
                    "grows as S·C²·(B + D)), fewer classes or a smaller D",
                )
            )
    return items


def readable(size: float) -> str:
    """A byte count a person can act on: "3.2 GiB", "540 MiB", "12 KiB" (never "0.0 GiB")."""
    for unit, scale in (("GiB", GIB), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def _kronecker_item(
    name: str, classes: int, dim: int, num_samples: int, itemsize: int, batch: int, draws_per_rotation: int | str = 1
) -> MemoryItem:
    """Bases and served bases (2C² + 2n²), λ_F, mean, served λ, batch λ and mean (5Cn), and one chunk of draws:
    noise and drawn heads (2·[chunk, C, n]), four [B, chunk, C] and three [chunk, B, max(n, D)] tensors
    (`kronecker.draw_chunk`)."""
    width = dim + 1
    reuse = resolve_draws_per_rotation(draws_per_rotation, num_samples, "kronecker", classes, batch)
    chunk = kronecker.draw_chunk(num_samples, classes, width, batch, reuse)
    state = 2 * classes * classes + 2 * width * width + 5 * classes * width
    draws = chunk * (2 * classes * width + 4 * batch * classes + 3 * batch * width)
    return MemoryItem(
        f"multiclass task '{name}' ({classes} classes, Kronecker posterior)",
        itemsize * (state + draws),
        "fewer classes or a smaller D",
    )


def refuse_if_too_large(
    layout: TaskLayout,
    num_samples: int,
    itemsize: int,
    limit_gb: float | None,
    batch_size: int | None = None,
    multiclass_posterior: str = "full",
    draws_per_rotation: int | str = 1,
) -> None:
    """Raise a MemoryError naming the largest part when the estimate at `batch_size` exceeds `limit_gb` GiB.

    `batch_size` is the (global) batch the model trains on; None (not known yet, before fit) checks the state
    and a one-sample step, a floor that refuses a layout no batch size could serve.
    """
    if limit_gb is None:
        return
    batch = 1 if batch_size is None else int(batch_size)
    items = estimate(layout, num_samples, itemsize, batch, multiclass_posterior, draws_per_rotation)
    total = sum(item.bytes for item in items)
    if total <= limit_gb * GIB:
        return
    posterior = (multiclass_posterior, draws_per_rotation)
    fixed = sum(item.bytes for item in estimate(layout, num_samples, itemsize, 0, *posterior))
    per_sample = sum(item.bytes for item in estimate(layout, num_samples, itemsize, 1, *posterior)) - fixed
    largest = max(items, key=lambda item: item.bytes)
    fitting = int((limit_gb * GIB - fixed) // per_sample) if per_sample > 0 else 0
    at = "even at batch size 1" if batch_size is None else f"at batch size {batch}"
    advice = (
        f"a batch of at most {fitting} samples fits" if fitting >= 1 else "no batch size fits: lower the state first"
    )
    raise MemoryError(
        f"BayesAgg would need about {readable(total)} for its state and one step {at} (num_samples={num_samples}): "
        f"{readable(fixed)} whatever the batch, plus {readable(per_sample)} per sample of the batch, above "
        f"memory_limit_gb={limit_gb:g} ({readable(limit_gb * GIB)}); {advice}. The largest part is the "
        f"{largest.what}: {readable(largest.bytes)}; to lower it use {largest.knob}. "
        "Pass memory_limit_gb=None to skip this check."
    )


def refuse_for(aggregator: Any, batch_size: int | None) -> None:
    """`refuse_if_too_large` for a BayesAgg instance (its layout, num_samples, linalg dtype and limit)."""
    itemsize = 8 if aggregator.linalg_dtype == "float64" else 4
    refuse_if_too_large(
        aggregator.layout,
        aggregator.num_samples,
        itemsize,
        aggregator.memory_limit_gb,
        batch_size,
        getattr(aggregator, "multiclass_posterior", "full"),
        getattr(aggregator, "kronecker_draws_per_rotation", 1),  # "auto" is resolved per head
    )
