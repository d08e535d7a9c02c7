"""Small pure-TensorFlow solvers on the K×K Gram matrix of the task gradients.

Every gradient-combination method here reduces to weights w ∈ R^K on the original task
gradients (the direction is d = Σ_k w_k g_k), computed from the Gram matrix M = [⟨g_k, g_l⟩].
K is small, so the solvers work in float64 on trace-normalized matrices and use fixed
iteration budgets inside `tf.while_loop` (with early stopping), so they compile under XLA.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

SOLVER_DTYPE = tf.float64
# Maps points [N, K] to objective values [N] and gradients [N, K].
BatchedObjective = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def trace_normalized(gram: tf.Tensor) -> tf.Tensor:
    """M / tr(M) in float64 (M itself when all gradients are zero): scale-free solver input."""
    gram = tf.cast(gram, SOLVER_DTYPE)
    trace = tf.linalg.trace(gram)
    return gram / tf.where(trace > 0, trace, tf.ones_like(trace))


def project_onto_simplex(point: tf.Tensor) -> tf.Tensor:
    """Euclidean projection onto {w ≥ 0, Σ w = 1} (sort-based, Held et al. 1974)."""
    size = tf.shape(point)[0]
    descending = tf.sort(point, direction="DESCENDING")
    counts = tf.range(1, size + 1, dtype=point.dtype)
    excess = tf.cumsum(descending) - 1.0
    support = tf.reduce_max(tf.where(descending - excess / counts > 0, counts, tf.ones_like(counts)))
    threshold = tf.reduce_sum(tf.where(counts == support, excess, tf.zeros_like(excess))) / support
    return tf.maximum(point - threshold, 0.0)


def min_norm_weights(gram: tf.Tensor, max_iterations: int = 500, tolerance: float = 1e-10) -> tf.Tensor:
    """argmin_{w ∈ simplex} ‖Σ_k w_k g_k‖² = wᵀMw (Sener & Koltun 2018, Eq. 3).

    Solved by accelerated projected gradient (FISTA, step 1/λ_max(M)) instead of the paper's
    Frank-Wolfe: same problem, but it reaches the optimum to ~1e-7 of ‖g‖² within the budget
    where Frank-Wolfe stalls near 1e-3, and the non-conflict guarantee ⟨d, g_k⟩ ≥ ‖d‖² holds
    only at the optimum. Stops when the duality gap wᵀMw - min_k (Mw)_k (relative to tr(M))
    is below `tolerance` or after `max_iterations` steps.
    """
    matrix = trace_normalized(gram)
    size = tf.shape(matrix)[0]
    step_size = 1.0 / tf.maximum(tf.linalg.eigvalsh(matrix)[-1], 1e-300)
    weights = tf.fill([size], tf.constant(1.0, SOLVER_DTYPE) / tf.cast(size, SOLVER_DTYPE))

    def body(
        i: tf.Tensor, w: tf.Tensor, extrapolated: tf.Tensor, momentum: tf.Tensor, gap: tf.Tensor
    ) -> tuple[tf.Tensor, ...]:
        new_w = project_onto_simplex(extrapolated - step_size * tf.linalg.matvec(matrix, extrapolated))
        new_momentum = (1.0 + tf.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
        extrapolated = new_w + ((momentum - 1.0) / new_momentum) * (new_w - w)
        matrix_w = tf.linalg.matvec(matrix, new_w)
        gap = tf.tensordot(new_w, matrix_w, 1) - tf.reduce_min(matrix_w)
        return i + 1, new_w, extrapolated, new_momentum, gap

    one = tf.constant(1.0, SOLVER_DTYPE)
    _, weights, _, _, _ = tf.while_loop(
        lambda i, w, extrapolated, momentum, gap: tf.logical_and(i < max_iterations, gap > tolerance),
        body,
        (tf.constant(0), weights, weights, one, one),
    )
    return weights


def frank_wolfe_simplex(
    objective_and_gradient: BatchedObjective,
    size: tf.Tensor,
    max_iterations: int,
    tolerance: float,
    num_line_points: int = 48,
) -> tf.Tensor:
    """Minimize a convex function over the probability simplex by Frank-Wolfe.

    `objective_and_gradient(w)` maps a batch of points [N, K] to values [N] and gradients
    [N, K]. The line search evaluates the objective on a fixed grid of step sizes in one
    batched call (geometric near 0, where Frank-Wolfe steps shrink), so an iteration is a
    handful of ops whatever K. Stops when the duality gap ⟨∇f, w - e_s⟩ is below `tolerance`.
    """
    steps = tf.concat(
        [
            tf.zeros([1], SOLVER_DTYPE),
            tf.exp(tf.linspace(tf.math.log(tf.constant(1e-6, SOLVER_DTYPE)), 0.0, num_line_points)),
        ],
        axis=0,
    )
    weights = tf.fill([size], tf.constant(1.0, SOLVER_DTYPE) / tf.cast(size, SOLVER_DTYPE))

    def gap_and_vertex(w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        _, gradient = objective_and_gradient(w[None])
        gradient = gradient[0]
        # Dynamic indexing (x[i] with a computed i) would make XLA treat the Gram matrix as a
        # compile-time constant and recompile every step: use reductions and gathers instead.
        return tf.tensordot(gradient, w, 1) - tf.reduce_min(gradient), tf.argmin(gradient, output_type=tf.int32)

    def step(i: tf.Tensor, w: tf.Tensor, gap: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        _, vertex = gap_and_vertex(w)
        direction = tf.one_hot(vertex, size, dtype=SOLVER_DTYPE) - w
        candidates = w[None] + steps[:, None] * direction[None]
        values, _ = objective_and_gradient(candidates)
        new_w = tf.gather(candidates, tf.argmin(values, output_type=tf.int32))
        new_gap, _ = gap_and_vertex(new_w)
        return i + 1, new_w, new_gap

    initial_gap, _ = gap_and_vertex(weights)
    _, weights, _ = tf.while_loop(
        lambda i, w, gap: tf.logical_and(i < max_iterations, gap > tolerance),
        step,
        (tf.constant(0), weights, initial_gap),
    )
    return weights


def nash_bargaining_weights(
    gram: tf.Tensor, max_iterations: int = 50, tolerance: float = 1e-10, ridge: float = 1e-6
) -> tf.Tensor:
    """The α > 0 with α_k (Nα)_k = 1 for all k (Navon et al. 2022, Eq. 3: Gᵀ G α = 1/α).

    N = M / ‖M‖_F + ridge·I, the Frobenius normalization of the authors' code; the ridge keeps
    a solution when a positive combination of the gradients is zero (e.g. opposite gradients),
    where the bargaining problem has none. The solution is the unique minimizer of the strictly
    convex, self-concordant f(α) = ½αᵀNα - Σ log α_k (its stationarity condition is Eq. 3), found
    by damped Newton steps α ← α - H⁻¹∇f / (1 + λ), λ the Newton decrement, which stay in α > 0
    and converge quadratically. Starts from the best multiple of ones.
    """
    gram = tf.cast(gram, SOLVER_DTYPE)
    norm = tf.norm(gram)
    size = tf.shape(gram)[0]
    identity = tf.eye(size, dtype=SOLVER_DTYPE)
    matrix = gram / tf.where(norm > 0, norm, tf.ones_like(norm)) + ridge * identity
    ones = tf.ones([size], SOLVER_DTYPE)
    alpha = ones * tf.sqrt(tf.cast(size, SOLVER_DTYPE) / tf.reduce_sum(matrix))

    def newton_step(alpha: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        gradient = tf.linalg.matvec(matrix, alpha) - 1.0 / alpha
        hessian = matrix + tf.linalg.diag(1.0 / tf.square(alpha))
        step = tf.linalg.cholesky_solve(tf.linalg.cholesky(hessian), gradient[:, None])[:, 0]
        decrement = tf.sqrt(tf.maximum(tf.tensordot(gradient, step, 1), 0.0))
        return step, decrement

    def body(i: tf.Tensor, alpha: tf.Tensor, decrement: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        step, decrement = newton_step(alpha)
        return i + 1, alpha - step / (1.0 + decrement), decrement

    _, alpha, _ = tf.while_loop(
        lambda i, alpha, decrement: tf.logical_and(i < max_iterations, decrement > tolerance),
        body,
        (tf.constant(0), alpha, tf.constant(1.0, SOLVER_DTYPE)),
    )
    return alpha


def positive_definite_part(matrix: tf.Tensor, ridge: float) -> tf.Tensor:
    """V max(Λ, 0) Vᵀ + ridge·I of a symmetric matrix: drops the negative eigenvalues that float32 rounding
    leaves in a Gram matrix, so that every principal submatrix has a Cholesky factor."""
    matrix = 0.5 * (matrix + tf.transpose(matrix))
    eigenvalues, eigenvectors = tf.linalg.eigh(matrix)
    clipped = tf.matmul(eigenvectors * tf.maximum(eigenvalues, 0.0)[None], eigenvectors, transpose_b=True)
    return clipped + ridge * tf.eye(tf.shape(matrix)[0], dtype=matrix.dtype)


def nonnegative_quadratic_minimizers(
    matrix: tf.Tensor, linear: tf.Tensor, tolerance: float = 1e-13, ridge: float = 1e-12
) -> tf.Tensor:
    """argmin_{x ≥ 0} ½xᵀAx + cᵀx for each row c of `linear` [R, K] (A [K, K] PSD, about unit trace): [R, K].

    An active-set method (Lawson & Hanson 1974, NNLS, here for a general convex quadratic): the free
    variables P solve A_PP x_P = -c_P exactly (Cholesky of A + ridge·I, the only approximation); a
    variable joins P while its gradient (Ax + c)_j < -tolerance, and a solve that would leave P's
    feasible region is cut back to its boundary. It ends after finitely many solves at the exact
    minimizer (the KKT point), unlike a projected-gradient method. The R problems run side by side
    with fixed shapes (masks instead of index sets), so the loop compiles under XLA.
    """
    matrix = positive_definite_part(tf.cast(matrix, SOLVER_DTYPE), ridge)
    linear = tf.cast(linear, SOLVER_DTYPE)
    rows, size = tf.shape(linear)[0], tf.shape(linear)[1]
    infinity = tf.constant(float("inf"), SOLVER_DTYPE)

    def free_solution(free: tf.Tensor) -> tf.Tensor:
        """x_P = -A_PP⁻¹ c_P and x = 0 off P, for every row's free set P [R, K] at once."""
        mask = tf.cast(free, SOLVER_DTYPE)
        system = matrix[None] * mask[:, :, None] * mask[:, None, :] + tf.linalg.diag(1.0 - mask)
        solution = tf.linalg.cholesky_solve(tf.linalg.cholesky(system), (-linear * mask)[..., None])[..., 0]
        return solution * mask

    def body(i: tf.Tensor, x: tf.Tensor, free: tf.Tensor, adding: tf.Tensor, done: tf.Tensor) -> tuple[tf.Tensor, ...]:
        gradient = tf.matmul(x, matrix) + linear
        scores = tf.where(tf.logical_and(~free, adding[:, None]), -gradient, -infinity)
        can_add = tf.reduce_max(scores, axis=1) > tolerance
        done = tf.logical_or(done, tf.logical_and(adding, ~can_add))
        entering = tf.one_hot(tf.argmax(scores, axis=1, output_type=tf.int32), size, on_value=True, off_value=False)
        free = tf.logical_or(free, tf.logical_and(entering, tf.logical_and(adding, can_add)[:, None]))
        candidate = free_solution(free)
        feasible = tf.reduce_all(tf.logical_or(~free, candidate > 0.0), axis=1)
        blocking = tf.logical_and(free, candidate <= 0.0)
        gap = x - candidate
        ratios = tf.where(blocking, x / tf.where(gap > 0.0, gap, tf.ones_like(gap)), infinity)
        step = tf.minimum(tf.reduce_min(ratios, axis=1, keepdims=True), 1.0)
        cut_back = x + step * (candidate - x)
        leaving = tf.logical_or(tf.logical_and(blocking, ratios <= step), cut_back <= 0.0)
        cut_free = tf.logical_and(free, ~leaving)
        cut_back = tf.where(cut_free, cut_back, tf.zeros_like(cut_back))
        keep = done[:, None]
        new_x = tf.where(keep, x, tf.where(feasible[:, None], candidate, cut_back))
        new_free = tf.where(keep, free, tf.where(feasible[:, None], free, cut_free))
        return i + 1, new_x, new_free, tf.logical_or(feasible, done), done

    # Each solve adds or removes a variable; 4K + 8 solves bound the finite active-set sequence in practice.
    budget = 4 * size + 8
    zeros = tf.zeros([rows, size], SOLVER_DTYPE)
    _, x, _, _, _ = tf.while_loop(
        lambda i, x, free, adding, done: tf.logical_and(i < budget, ~tf.reduce_all(done)),
        body,
        (tf.constant(0), zeros, tf.zeros([rows, size], tf.bool), tf.ones([rows], tf.bool), tf.zeros([rows], tf.bool)),
    )
    return x


def dual_cone_projection_weights(gram: tf.Tensor, preferences: tf.Tensor) -> tf.Tensor:
    """Weights v of the projection of Jᵀu onto the dual cone {d: Jd ≥ 0} of the gradient rows, per row u of
    `preferences` [R, K]: π(Jᵀu) = Jᵀv with v = argmin_{v ≥ u} vᵀMv (Quinton & Rey 2024, Proposition 1).

    Solved exactly as v = u + x, x = argmin_{x ≥ 0} ½xᵀMx + (Mu)ᵀx, on the trace-normalized M (the weights
    do not depend on the gradients' scale). TorchJD solves the same program with quadprog on M/tr(M) + 1e-4·I,
    which biases v by the ridge; ours adds 1e-12·I.
    """
    matrix = trace_normalized(gram)
    preferences = tf.cast(preferences, SOLVER_DTYPE)
    return preferences + nonnegative_quadratic_minimizers(matrix, tf.matmul(preferences, matrix))


def alpha_fair_weights(gram: tf.Tensor, alpha: float, max_iterations: int = 100, tolerance: float = 1e-12) -> tf.Tensor:
    """The w > 0 with (Mw)_k = w_k^{-1/α} for all k (Ban & Ji 2024, Eq. 4; α = 1 is Nash-MTL's condition).

    It is the stationary point of the strictly convex f(w) = ½wᵀNw - Σ_k φ(w_k), φ' = w^{-1/α}, on
    N = M/tr(M) + 1e-12·I; the solution for M itself is tr(M)^{-α/(α+1)} times it ((sM)w = w^{-1/α} is
    solved by s^{-α/(α+1)} w'). Damped Newton steps (divided by 1 + λ, λ the Newton decrement, and cut to
    keep w > 0), from the best multiple of ones.
    """
    gram = tf.cast(gram, SOLVER_DTYPE)
    trace = tf.linalg.trace(gram)
    trace = tf.where(trace > 0, trace, tf.ones_like(trace))
    size = tf.shape(gram)[0]
    matrix = gram / trace + 1e-12 * tf.eye(size, dtype=SOLVER_DTYPE)
    exponent = -1.0 / alpha
    start = (tf.cast(size, SOLVER_DTYPE) / tf.reduce_sum(matrix)) ** (alpha / (alpha + 1.0))
    weights = tf.fill([size], start)

    def body(i: tf.Tensor, w: tf.Tensor, decrement: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        gradient = tf.linalg.matvec(matrix, w) - w**exponent
        hessian = matrix + tf.linalg.diag(-exponent * w ** (exponent - 1.0))
        step = tf.linalg.cholesky_solve(tf.linalg.cholesky(hessian), gradient[:, None])[:, 0]
        decrement = tf.sqrt(tf.maximum(tf.tensordot(gradient, step, 1), 0.0))
        limit = tf.reduce_min(tf.where(step > 0, 0.9 * w / tf.where(step > 0, step, 1.0), 1.0))
        return i + 1, w - tf.minimum(1.0 / (1.0 + decrement), limit) * step, decrement

    _, weights, _ = tf.while_loop(
        lambda i, w, decrement: tf.logical_and(i < max_iterations, decrement > tolerance),
        body,
        (tf.constant(0), weights, tf.constant(1.0, SOLVER_DTYPE)),
    )
    return weights * trace ** (-alpha / (alpha + 1.0))
