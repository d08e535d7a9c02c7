"""Scale conventions of the gradient-combination methods, pinned on one fixed Jacobian.

J = [[-4, 1, 1], [6, 1, 1]]: two tasks, three parameters (the matrix TorchJD's tests use), so
g1 = (-4, 1, 1), g2 = (6, 1, 1), ‖g1‖² = 18, ‖g2‖² = 38, ⟨g1, g2⟩ = -22 (the tasks conflict),
Gram matrix M = J Jᵀ = [[18, -22], [-22, 38]], ‖M‖_F = √2736, cos θ = -22/√684.

For every method the expected direction below is worked out by hand from the paper's formula
(derivation in the comments, numbers evaluated with numpy from closed forms — never by calling
this package), then compared with what the method gives at both levels ("parameters": J as the
[K, P] parameter gradients; "representation": one sample, so the task gradients are the rows of J).
A second expectation states the *original code's* update for the same J and the ratio
ours / original, which docs/aggregators.md ("Scale conventions") reports:

| method     | ours                      | original code                                   | ratio      |
|------------|---------------------------|-------------------------------------------------|------------|
| MGDA       | Σ α g, α on the simplex   | same (Sener & Koltun, normalization "none")     | 1          |
| PCGrad     | Σ_i g_i^PC                | same (paper Algorithm 1 and code: the sum)      | 1          |
| IMTL-G     | Σ α g, Σ α = 1            | same (paper Eq. 7; weights on the losses)       | 1          |
| CAGrad     | (g0 + λ g_w)/(1 + c²)     | K·(g0 + λ g_w)/(1 + c²) (`rescale=1`, then ×K)  | 1/K = 0.5  |
| Nash-MTL   | Σ α g clipped to norm 1   | same (`max_norm=1.0`)                           | 1          |
| Aligned-MTL| Σ of aligned gradients    | same (`grads.sum(-1)` in the authors' balancer) | 1          |
| UPGrad     | mean of the projections   | TorchJD: same (quadprog with a 1e-4 ridge)      | 1 (±5e-4)  |
| DualProj   | projection of the mean    | TorchJD: same (quadprog with a 1e-4 ridge)      | 1 (±5e-4)  |
| ConFIG     | (Σ_i ⟨g_i, ĝ⟩) ĝ          | TorchJD: same                                   | 1          |
| FairGrad   | Σ w g, w ⊙ Mw = w^{-1/α}  | TorchJD: same (raw Gram matrix)                 | 1          |
| PCD        | ‖g1‖ d̃/‖d̃‖               | TorchJD: same                                   | 1          |
| GradVac    | Σ_i g_i' (= PCGrad's at first) | same (TorchJD `GradVac`)                   | 1          |
| SDMGrad    | J(w + λw̃)/(1 + λ)         | same (TorchJD `SDMGradWeighting`)               | 1          |
| MoDo       | Jλ, λ on the simplex      | same (TorchJD `MoDoWeighting`)                  | 1          |
| IMTL       | Σ α e^s g, Σ α = 1 (s = 0)| same (LibMTL's IMTL: IMTL-G on e^s-scaled losses)| 1          |
| DB-MTL     | Σ α_k g_k, α = max n̂/n̂_k  | Σ α_k ĝ_k, ĝ = vector average (1-β)g at step 1  | 10 (step 1)|

Every direction is a positive multiple of the original's: cosine similarity 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.aggregators import (
    DBMTL,
    IMTL,
    IMTLG,
    MGDA,
    PCD,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    MoCo,
    MoDo,
    NashMTL,
    PCGrad,
    SDMGrad,
    UPGrad,
)
from keras_bayesagg.aggregators.pcgrad import pcgrad_weights
from keras_bayesagg.interface import AggregatorInputs, TaskLayout
from tests.conftest import applied

J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
G1, G2 = J
GRAM = J @ J.T  # [[18, -22], [-22, 38]]
N1, N2 = math.sqrt(18.0), math.sqrt(38.0)  # ‖g1‖, ‖g2‖
U1, U2 = G1 / N1, G2 / N2  # unit vectors
C = 0.4  # CAGrad's c
LEVELS = ["parameters", "representation"]

# ---------------------------------------------------------------- the directions, by hand
# MGDA (Sener & Koltun 2018, Eq. 3): min_{α∈[0,1]} ‖α g1 + (1-α) g2‖². For two tasks the
# minimizer is α = ⟨g2 - g1, g2⟩ / ‖g1 - g2‖² = (38 + 22) / (18 + 38 + 44) = 0.6 (inside [0, 1]),
# so d = 0.6·(-4, 1, 1) + 0.4·(6, 1, 1) = (0, 1, 1).
MGDA_EXPECTED = np.array([0.0, 1.0, 1.0])

# PCGrad (Yu et al. 2020, Algorithm 1): each g_i loses its component along a conflicting g_j.
#   g1^PC = g1 - (⟨g1, g2⟩/‖g2‖²) g2 = g1 + (22/38) g2 = (-10/19, 30/19, 30/19)
#   g2^PC = g2 - (⟨g2, g1⟩/‖g1‖²) g1 = g2 + (22/18) g1 = (10/9, 20/9, 20/9)
# With two tasks the order does not matter: each g_i is compared with g_j once (and with itself,
# ⟨g_i^PC, g_i⟩ = ‖g_i‖² - ⟨g_i, g_j⟩²/‖g_j‖² ≥ 0 by Cauchy-Schwarz, so never projected).
#   d = g1^PC + g2^PC = (100/171, 650/171, 650/171).
PCGRAD_EXPECTED = np.array([-10 / 19 + 10 / 9, 30 / 19 + 20 / 9, 30 / 19 + 20 / 9])

# IMTL-G (Liu et al. 2021, Eq. 7): α_{2:K} = g1 Uᵀ (D Uᵀ)⁻¹ with rows D = g1 - g_k, U = u1 - u_k,
# α_1 = 1 - Σ α_{2:K}. Here scalars: α2 = ⟨g1, u1 - u2⟩ / ⟨g1 - g2, u1 - u2⟩
#   = (√18 + 22/√38) / (√18 + 22/√38 + 22/√18 + √38) ≈ 0.40767, α1 ≈ 0.59233,
# d = α1 g1 + α2 g2 ≈ (0.0767, 1, 1), whose projections on u1 and u2 are equal.
IMTLG_ALPHA2 = (G1 @ (U1 - U2)) / ((G1 - G2) @ (U1 - U2))
IMTLG_EXPECTED = (1 - IMTLG_ALPHA2) * G1 + IMTLG_ALPHA2 * G2

# CAGrad (Liu et al. 2021, Eq. 4-5, Algorithm 1): g0 = (g1 + g2)/2 = (1, 1, 1), ‖g0‖ = √3.
# Dual: min_{w∈[0,1]} ⟨g_w, g0⟩ + c‖g0‖‖g_w‖ with g_w = w g1 + (1-w) g2 = (x, 1, 1), x = 6 - 10w:
#   F(x) = x + 2 + c√3·√(x² + 2),  F'(x) = 1 + c√3·x/√(x² + 2) ≥ 1 - c√3 > 0 for c = 0.4,
# so F is smallest at the smallest x = -4 (w = 1): g_w = g1, ‖g_w‖ = √18, λ = c‖g0‖/‖g_w‖ = c/√6.
#   d = g0 + (c/√6)·g1 ≈ (0.3468, 1.1633, 1.1633)  (paper's update, before any rescaling)
# Ours divides by 1 + c² (the authors' `rescale=1`, our default "one_plus_c_squared").
CAGRAD_UNSCALED = np.ones(3) + C / math.sqrt(6.0) * G1
CAGRAD_EXPECTED = CAGRAD_UNSCALED / (1 + C**2)

# Nash-MTL (Navon et al. 2022, Eq. 3): α_k (Nα)_k = 1 with N = M/‖M‖_F (authors' normalization).
# Subtracting the two equations: α1² N11 = α2² N22, so α_k‖g_k‖ = t·√‖M‖_F for one t > 0, and then
# t²(1 + cos θ) = 1. The direction is d = Σ α_k g_k = t·√‖M‖_F·(u1 + u2) with
# ‖d‖² = αᵀMα = ‖M‖_F·Σ_k α_k(Nα)_k = 2‖M‖_F, so ‖d‖ = √(2√2736) ≈ 10.23.
# The authors clip ‖d‖ to max_norm = 1.0 (their default), which gives d/‖d‖.
NASH_COS = GRAM[0, 1] / (N1 * N2)
NASH_UNCLIPPED = math.sqrt(np.linalg.norm(GRAM)) / math.sqrt(1 + NASH_COS) * (U1 + U2)
NASH_EXPECTED = NASH_UNCLIPPED / np.linalg.norm(NASH_UNCLIPPED)

# Aligned-MTL (Senushkin et al. 2023, Eq. 10-11, scale "min"): M = V Λ Vᵀ, B = √λ_min V Λ^{-1/2} Vᵀ,
# aligned gradients Ĝ = Jᵀ B (orthogonal, both of norm √λ_min), d = Ĝ 1 (their sum).
# λ = 28 ± √(100 + 484) = 28 ± √584. For a 2×2 matrix, M^{-1/2} = (M + √det·I)^{-1}·(… ) is
# messy; evaluate B = √λ_min·M^{-1/2} from the closed-form eigenpairs instead:
_EIGENVALUES = np.array([28.0 - math.sqrt(584.0), 28.0 + math.sqrt(584.0)])
# eigenvector of [[18, -22], [-22, 38]] for λ: (22, 18 - λ) normalized
_EIGENVECTORS = np.stack([np.array([22.0, 18.0 - lam]) / np.hypot(22.0, 18.0 - lam) for lam in _EIGENVALUES], axis=1)
ALIGNED_B = math.sqrt(_EIGENVALUES[0]) * (_EIGENVECTORS / np.sqrt(_EIGENVALUES)) @ _EIGENVECTORS.T
ALIGNED_EXPECTED = J.T @ ALIGNED_B @ np.ones(2)

# UPGrad (Quinton & Rey 2024, Eq. 5): ½(π(g1) + π(g2)), π the projection onto {d: ⟨d, g1⟩ ≥ 0, ⟨d, g2⟩ ≥ 0}.
# g1 conflicts with g2 only, so π(g1) = g1 + (22/38) g2 = (-10/19, 30/19, 30/19) (⟨π(g1), g1⟩ = 100/19 ≥ 0 holds),
# and π(g2) = g2 + (22/18) g1 = (10/9, 20/9, 20/9): with two tasks, half of PCGrad's sum.
UPGRAD_EXPECTED = PCGRAD_EXPECTED / 2

# DualProj: π(g0), g0 = (1, 1, 1); ⟨g0, g1⟩ = -2 < 0 and ⟨g0, g2⟩ = 8, so only g1's constraint is active:
#   d = g0 + (2/18) g1 = (5/9, 10/9, 10/9), and ⟨d, g2⟩ = 50/9 ≥ 0 holds.
DUALPROJ_EXPECTED = np.array([5 / 9, 10 / 9, 10 / 9])

# ConFIG (Liu et al. 2024, Eq. 2): the unit vectors u1, u2 have cosine matrix C = [[1, c], [c, 1]], c = cos θ,
# so Ũ⁺1 = Ũᵀ C⁻¹ 1 = (u1 + u2)/(1 + c) and ĝ = (u1 + u2)/‖u1 + u2‖, ‖u1 + u2‖² = 2(1 + c).
# Its length Σ_i ⟨g_i, ĝ⟩ = (‖g1‖ + ‖g2‖)(1 + c)/‖u1 + u2‖, so d = (‖g1‖ + ‖g2‖)/2 · (u1 + u2).
CONFIG_EXPECTED = (N1 + N2) / 2 * (U1 + U2)

# FairGrad, α = 1 (Ban & Ji 2024, Eq. 4): w ⊙ Mw = 1 on the raw M. As for Nash-MTL above (without the
# Frobenius normalization): w_k‖g_k‖ = t with t²(1 + cos θ) = 1, so d = (u1 + u2)/√(1 + cos θ).
FAIRGRAD_EXPECTED = (U1 + U2) / math.sqrt(1 + NASH_COS)

# PCD, first step (τ = 0.02, ε = 1e-8): the debiased moving average is ‖g_i‖² itself, so g̃_i = u_i (up to ε).
# d̃ = argmin ½‖d - u1‖² s.t. ⟨u2, d⟩ ≥ τ; ⟨u2, u1⟩ = cos θ < τ, so the constraint is active:
# d̃ = u1 + (τ - cos θ) u2, and d = ‖g1‖ d̃/‖d̃‖.
PCD_TAU = 0.02
_PCD_UNSCALED = U1 + (PCD_TAU - NASH_COS) * U2
PCD_EXPECTED = N1 * _PCD_UNSCALED / np.linalg.norm(_PCD_UNSCALED)

# GradVac (Wang et al. 2021, Eq. 3), first step: every target φ̂ starts at 0, so only negative cosines are
# lifted, to exactly 0: g_i' = g_i - (⟨g_i, g_j⟩/‖g_j‖²) g_j, PCGrad's projection, and d is PCGrad's sum.
GRADVAC_EXPECTED = PCGRAD_EXPECTED

# MoDo (Chen et al. 2023, Eq. 2.9a), first step from λ = (½, ½), γ = ρ = 0.1:
#   λ - γ(Mλ + ρλ) = (½, ½) - 0.1·((-2, 8) + (0.05, 0.05)) = (0.695, -0.305); its projection onto the simplex
#   shifts both by (1 - 0.39)/2 = 0.305 and clips: λ = (1, 0), so d = g1.
MODO_EXPECTED = G1


def _sdmgrad_first_step() -> np.ndarray:
    """SDMGrad (Xiao et al. 2023, Eq. 6) from w = (½, ½): 20 heavy-ball projected steps (η = 10, μ = 0.5) on
    ½‖J(w + λw̃)‖² with M divided by the squared mean gradient norm, λ = 0.3, w̃ = (½, ½); for two tasks the
    simplex projection of p is (a, 1 - a), a = clip((p1 - p2 + 1)/2, 0, 1)."""
    matrix, w, velocity, target = GRAM / ((N1 + N2) / 2) ** 2, np.full(2, 0.5), np.zeros(2), 0.3 * np.full(2, 0.5)
    for _ in range(20):
        velocity = 0.5 * velocity + matrix @ (w + target)
        point = w - 10.0 * velocity
        first = np.clip((point[0] - point[1] + 1) / 2, 0.0, 1.0)
        w = np.array([first, 1 - first])
    return J.T @ ((w + target) / 1.3)


SDMGRAD_EXPECTED = _sdmgrad_first_step()
# IMTL, the hybrid (Liu et al. 2021, Algorithm 1), with its log-scales at 0: e^0 g_k = g_k, so IMTL-G's d.
IMTL_EXPECTED = IMTLG_EXPECTED

# DB-MTL (Lin et al. 2023), first step, losses 1 (so ∇ log(L_k + ε) = g_k up to ε = 1e-8): the norm averages
# are (1 - β)‖g_k‖, α_k = max_j ‖g_j‖ / ‖g_k‖ = (√38/√18, 1), so d = ‖g2‖ (u1 + u2) ≈ (1.07, 2.62, 2.62).
# LibMTL combines its averaged *vectors* (1 - β) g_k instead: (1 - β) d, 1/10 of ours at step 1 (β = 0.9).
DBMTL_EXPECTED = N2 * (U1 + U2)

EXPECTED = {
    "GradVac": (lambda level: GradVac(level=level, seed=0), GRADVAC_EXPECTED),
    "SDMGrad": (lambda level: SDMGrad(level=level), SDMGRAD_EXPECTED),
    "MoDo": (lambda level: MoDo(level=level), MODO_EXPECTED),
    "MGDA": (lambda level: MGDA(level=level), MGDA_EXPECTED),
    "PCGrad": (lambda level: PCGrad(level=level, seed=0), PCGRAD_EXPECTED),
    "CAGrad": (lambda level: CAGrad(c=C, level=level), CAGRAD_EXPECTED),
    "IMTLG": (lambda level: IMTLG(level=level), IMTLG_EXPECTED),
    "NashMTL": (lambda level: NashMTL(level=level), NASH_EXPECTED),
    "AlignedMTL": (lambda level: AlignedMTL(level=level), ALIGNED_EXPECTED),
    "UPGrad": (lambda level: UPGrad(level=level), UPGRAD_EXPECTED),
    "DualProj": (lambda level: DualProj(level=level), DUALPROJ_EXPECTED),
    "ConFIG": (lambda level: ConFIG(level=level), CONFIG_EXPECTED),
    "FairGrad": (lambda level: FairGrad(alpha=1.0, level=level), FAIRGRAD_EXPECTED),
    "PCD": (lambda level: PCD(tau=PCD_TAU, level=level), PCD_EXPECTED),
    "IMTL": (lambda level: IMTL(level=level), IMTL_EXPECTED),
    "DBMTL": (lambda level: DBMTL(level=level), DBMTL_EXPECTED),
}

# The original code's update for the same J, and ours / original (see the module docstring).
ORIGINAL_UPDATE = {
    # intel-isl/MultiObjectiveOptimization: loss = Σ_t sol_t L_t with sol on the simplex.
    "MGDA": MGDA_EXPECTED,
    # Algorithm 1 returns Σ_i g_i^PC; the authors' code sums the projected gradients.
    "PCGrad": PCGRAD_EXPECTED,
    # The paper weights the losses by α (Σ α = 1).
    "CAGrad": 2 * CAGRAD_UNSCALED / (1 + C**2),  # cagrad(..., rescale=1), then ×K "to match the sum loss"
    "IMTLG": IMTLG_EXPECTED,
    # NashMTL(max_norm=1.0): loss = Σ α_k L_k, then clip_grad_norm_(shared, 1.0).
    "NashMTL": NASH_EXPECTED,
    # AlignedMTLBalancer: Ĝ summed over tasks.
    "AlignedMTL": ALIGNED_EXPECTED,
    # TorchJD 0.18 (the anchor of the methods below) on J, float64; its UPGrad and DualProj solve the projection
    # with quadprog on M/tr(M) + 1e-4·I, which moves them off the exact projection by ~1e-4 (cosine 1 - 1e-8).
    "UPGrad": np.array([0.292902000156936, 1.9003520780018968, 1.9003520780018968]),
    "DualProj": np.array([0.5563158128582222, 1.1109210467854445, 1.1109210467854445]),
    "ConFIG": np.array([0.15880897580793973, 2.070606758062621, 2.0706067580626217]),
    "FairGrad": np.array([0.07658428838583509, 0.9985326351132684, 0.9985326351132684]),
    "PCD": np.array([-0.8200327513214063, 2.943428807255259, 2.943428807255259]),
    # TorchJD's GradVac, SDMGradWeighting and MoDoWeighting: the same sums and simplex weights.
    "GradVac": GRADVAC_EXPECTED,
    "SDMGrad": SDMGRAD_EXPECTED,
    "MoDo": MODO_EXPECTED,
    # LibMTL's IMTL: IMTL-G's α on the gradients of e^s L - s.
    "IMTL": IMTL_EXPECTED,
    # LibMTL's DB_MTL: Σ α_k ĝ_k with the vector averages ĝ_k = (1 - β) g_k after one step.
    "DBMTL": (1 - 0.9) * DBMTL_EXPECTED,
}
RATIO_TO_ORIGINAL = {"MGDA": 1.0, "PCGrad": 1.0, "CAGrad": 0.5, "IMTLG": 1.0, "NashMTL": 1.0, "AlignedMTL": 1.0}
RATIO_TO_ORIGINAL |= {"UPGrad": 1.0, "DualProj": 1.0, "ConFIG": 1.0, "FairGrad": 1.0, "PCD": 1.0}
# How far the original's update may be from ours (its solver's own error; exact closed forms otherwise).
ORIGINAL_TOLERANCE = {"UPGrad": 5e-4, "DualProj": 5e-4}
RATIO_TO_ORIGINAL |= {"GradVac": 1.0, "SDMGrad": 1.0, "MoDo": 1.0}
RATIO_TO_ORIGINAL |= {"IMTL": 1.0, "DBMTL": 10.0}


def layout() -> TaskLayout:
    return TaskLayout({"a": kb.tasks.Regression(), "b": kb.tasks.Regression()}, 3, parameter_count=3)


def direction_for(aggregator: kb.interface.Aggregator, jacobian: np.ndarray = J) -> np.ndarray:
    """The combined direction for task gradients `jacobian` [K, P], at the aggregator's level."""
    aggregator.build_for(layout())
    gradients = tf.constant(jacobian, tf.float32)
    representation = aggregator.level == "representation"
    result = aggregator.aggregate(
        AggregatorInputs(
            losses=tf.ones([2]),  # DB-MTL's log losses: ∇ log L = ∇L at L = 1
            representation=tf.zeros([1, 3]),
            # One sample: the per-sample gradients [1, K, D] are the task gradients themselves.
            task_gradients=gradients[None] if representation else None,
            parameter_gradients=None if representation else gradients,
            labels={},
            head_weights={},
        )
    )
    direction = result.representation_gradient[0] if representation else result.parameter_gradient
    return direction.numpy().astype("float64")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(EXPECTED))
def test_direction_equals_the_hand_derived_value(name, level):
    make, expected = EXPECTED[name]
    np.testing.assert_allclose(direction_for(make(level)), expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_same_direction_as_the_original_and_the_documented_scale(name):
    ours = direction_for(EXPECTED[name][0]("parameters"))
    original = ORIGINAL_UPDATE[name]
    assert cosine(ours, original) == pytest.approx(1.0, abs=1e-6)
    tolerance = ORIGINAL_TOLERANCE.get(name, 2e-4)
    assert np.linalg.norm(ours) / np.linalg.norm(original) == pytest.approx(RATIO_TO_ORIGINAL[name], rel=tolerance)


def test_the_hand_derivations_hold():
    """Sanity of the closed forms themselves, independent of the package."""
    # MGDA: the min-norm point of a segment is orthogonal to it.
    assert abs(MGDA_EXPECTED @ (G1 - G2)) < 1e-12
    # PCGrad: with two tasks ⟨d, g_k⟩ ≥ 0 and both projected gradients are orthogonal to the other task.
    assert (-10 / 19 * 6 + 30 / 19 * 2) == pytest.approx(0.0) and (10 / 9 * -4 + 20 / 9 * 2) == pytest.approx(0.0)
    # IMTL-G: equal projections on the unit vectors.
    assert IMTLG_EXPECTED @ U1 == pytest.approx(IMTLG_EXPECTED @ U2)
    # CAGrad: stays in the ball ‖d - g0‖ ≤ c‖g0‖ (on its boundary here).
    assert np.linalg.norm(CAGRAD_UNSCALED - np.ones(3)) == pytest.approx(C * math.sqrt(3.0))
    # Nash-MTL: ⟨g_k, d⟩ = ‖M‖_F/α_k (the bargaining condition on M, unnormalized) and ‖d‖² = 2‖M‖_F.
    alphas = np.linalg.lstsq(J.T, NASH_UNCLIPPED, rcond=None)[0]
    np.testing.assert_allclose(alphas * (J @ NASH_UNCLIPPED), np.linalg.norm(GRAM), rtol=1e-12)
    assert np.linalg.norm(NASH_UNCLIPPED) ** 2 == pytest.approx(2 * np.linalg.norm(GRAM))
    # Aligned-MTL: the eigenpairs are right and the aligned gradients are orthogonal with norm √λ_min.
    np.testing.assert_allclose(GRAM @ _EIGENVECTORS, _EIGENVECTORS * _EIGENVALUES, atol=1e-12)
    aligned = J.T @ ALIGNED_B
    np.testing.assert_allclose(aligned.T @ aligned, _EIGENVALUES[0] * np.eye(2), atol=1e-10)
    # UPGrad and DualProj: no conflict with either task; DualProj's active constraint holds with equality.
    assert np.all(J @ UPGRAD_EXPECTED >= 0) and DUALPROJ_EXPECTED @ G1 == pytest.approx(0.0, abs=1e-12)
    # ConFIG: equal cosines with both gradients. FairGrad: w ⊙ Mw = 1 for the w with d = Jᵀw.
    assert cosine(CONFIG_EXPECTED, G1) == pytest.approx(cosine(CONFIG_EXPECTED, G2))
    fair_weights = np.linalg.lstsq(J.T, FAIRGRAD_EXPECTED, rcond=None)[0]
    np.testing.assert_allclose(fair_weights * (GRAM @ fair_weights), 1.0, rtol=1e-12)
    # PCD: the constraint ⟨u2, d̃⟩ = τ is active and d has ‖g1‖.
    assert U2 @ _PCD_UNSCALED == pytest.approx(PCD_TAU) and np.linalg.norm(PCD_EXPECTED) == pytest.approx(N1)


def test_pcgrad_both_orders_give_the_same_sum():
    gram = tf.constant(GRAM)
    for order in ([[0, 1], [0, 1]], [[1, 0], [1, 0]], [[0, 1], [1, 0]], [[1, 0], [0, 1]]):
        weights = pcgrad_weights(gram, tf.constant(order)).numpy()
        # g1^PC = g1 + (11/19) g2, g2^PC = g2 + (11/9) g1 → weights (1 + 11/9, 1 + 11/19)
        np.testing.assert_allclose(weights, [1 + 11 / 9, 1 + 11 / 19], rtol=1e-12)
        np.testing.assert_allclose(weights @ J, PCGRAD_EXPECTED, rtol=1e-12)
    for seed in range(4):  # whatever order the seed draws
        np.testing.assert_allclose(direction_for(PCGrad(level="parameters", seed=seed)), PCGRAD_EXPECTED, rtol=1e-5)


# ---------------------------------------------------------------- Nash-MTL's max_norm
@pytest.mark.parametrize("level", LEVELS)
def test_nash_mtl_without_clipping_is_ten_times_the_authors_update(level):
    ours = direction_for(NashMTL(level=level, max_norm=None))
    np.testing.assert_allclose(ours, NASH_UNCLIPPED, rtol=2e-4)
    assert np.linalg.norm(ours) == pytest.approx(math.sqrt(2 * math.sqrt(2736.0)), rel=1e-4)  # ≈ 10.23


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 20.0])
def test_nash_mtl_max_norm_clips_only_longer_directions(level, max_norm):
    ours = direction_for(NashMTL(level=level, max_norm=max_norm))
    expected = NASH_UNCLIPPED * min(1.0, max_norm / np.linalg.norm(NASH_UNCLIPPED))
    np.testing.assert_allclose(ours, expected, rtol=2e-4)


def test_nash_mtl_reported_weights_are_the_coefficients_of_the_clipped_direction():
    aggregator = NashMTL(level="parameters")
    aggregator.build_for(layout())
    result = applied(
        aggregator,
        AggregatorInputs(tf.zeros([2]), tf.zeros([1, 3]), None, {}, {}, parameter_gradients=tf.constant(J, tf.float32)),
    )
    np.testing.assert_allclose(result.task_weights.numpy() @ J, result.parameter_gradient.numpy(), rtol=1e-5)
    # The bargaining weights kept for `update_weights_every` stay unclipped.
    unclipped = aggregator.bargaining_weights.numpy() @ J
    np.testing.assert_allclose(unclipped, NASH_UNCLIPPED, rtol=2e-4)


def test_nash_mtl_max_norm_compiles_under_xla_at_the_representation_level():
    aggregator = NashMTL(max_norm=0.25)
    aggregator.build_for(TaskLayout({"a": kb.tasks.Regression(), "b": kb.tasks.Regression()}, 3))
    step = tf.function(
        lambda g: (
            aggregator.aggregate(AggregatorInputs(tf.zeros([2]), tf.zeros([4, 3]), g, {}, {})).representation_gradient
        ),
        jit_compile=True,
    )
    gradients = np.random.default_rng(0).normal(size=(4, 2, 3)).astype("float32") * 100.0
    direction = step(tf.constant(gradients)).numpy()
    assert np.linalg.norm(direction) == pytest.approx(0.25, rel=1e-5)
    small = step(tf.constant(gradients * 1e-4)).numpy()  # ‖d‖ < 0.25: untouched
    np.testing.assert_allclose(small, direction_unclipped(gradients * 1e-4), rtol=1e-4)


def direction_unclipped(gradients: np.ndarray) -> np.ndarray:
    aggregator = NashMTL(max_norm=None)
    aggregator.build_for(layout())
    return aggregator.aggregate(
        AggregatorInputs(tf.zeros([2]), tf.zeros([4, 3]), tf.constant(gradients), {}, {})
    ).representation_gradient.numpy()


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "1", True])
def test_nash_mtl_rejects_a_bad_max_norm(bad):
    with pytest.raises(ValueError, match="max_norm"):
        NashMTL(max_norm=bad)


def test_nash_mtl_max_norm_is_saved_in_the_config():
    for max_norm in (None, 2.5):
        config = NashMTL(max_norm=max_norm).get_config()
        assert config["max_norm"] == max_norm
        assert NashMTL.from_config(config).max_norm == max_norm
    assert NashMTL().max_norm == 1.0


@pytest.mark.parametrize("level", LEVELS)
def test_moco_first_step_hand_worked(level):
    """MoCo (Fernando et al. 2023, Algorithm 1) from Y = 0, λ = (½, ½), β₁ = 0.5, γ₁ = 0.1, ρ = 0, unnormalized.
    parameters: Y = ½J, λ = Π((½, ½) - 0.1·¼·(-2, 8)) = Π(0.55, 0.3) = (0.625, 0.375), d = Yᵀλ = (-0.125, 0.5, 0.5).
    representation (tracks the Gram matrix, ½M, and combines this step's gradients):
    λ = Π((½, ½) - 0.1·½·(-2, 8)) = Π(0.6, 0.1) = (0.75, 0.25), d = 0.75 g1 + 0.25 g2 = (-1.5, 1, 1)."""
    expected = [-0.125, 0.5, 0.5] if level == "parameters" else [-1.5, 1.0, 1.0]
    np.testing.assert_allclose(
        direction_for(MoCo(loss_normalization=False, level=level)), expected, rtol=1e-5, atol=1e-6
    )


def test_excess_mtl_first_step_is_the_average_and_graddrop_keeps_the_unanimous_coordinates():
    """ExcessMTL divides the first step's excess risks by themselves (the paper's scale processing): uniform
    weights, d = (g1 + g2)/2 = (1, 1, 1). (TorchJD applies the undivided estimates, ≈ (‖g1‖₁, ‖g2‖₁) = (6, 8), on the
    first step: w ∝ (e⁶, e⁸), a different direction for that one step.)
    GradDrop: coordinates 2 and 3 have one sign (purity 1) and are kept whole; coordinate 1 (-4 vs 6, purity 0.6)
    keeps either the positive or the negative component: d = (6, 2, 2) or (-4, 2, 2). The sum, as TorchJD."""
    for level in LEVELS:
        np.testing.assert_allclose(direction_for(ExcessMTL(level=level)), [1.0, 1.0, 1.0], rtol=1e-6)
        drawn = direction_for(GradDrop(level=level, seed=0))
        assert drawn[0] in (6.0, -4.0) and np.allclose(drawn[1:], 2.0)
