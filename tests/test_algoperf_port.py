"""``lightning_opt.benchmark.scoring`` against a port of MLCommons AlgoPerf's scoring
(``tests/algoperf_port.py``: sources and commits in its docstring).

The project scores one time per submission and workload; AlgoPerf's per-study rule (fastest
reaching trial per study, median over studies) is applied by the port first, and the project's
``ratios``/``profile``/``score`` are fed those times. Where the two disagree by design (the 4x
cut-off, the constant denominator of ``rho``, NaN for a missing workload), a test pins the
difference down instead of hiding it.
"""

from __future__ import annotations

import math

import algoperf_port as ap
import numpy as np
import pytest

from lightning_opt.benchmark import scoring

INF = math.inf
SUBMISSIONS = ["fast", "mid", "slow", "twin", "never"]
WORKLOADS = [f"w{i}" for i in range(8)]  # AlgoPerf's NUM_BASE_WORKLOADS: 8
UNREACHED = "w7"  # no submission reaches it
STUDIES, TRIALS = 3, 5


def _study(value: float, rng: np.random.Generator) -> list[float]:
    """Five trials whose fastest reaching one took ``value`` (the others slower or missed)."""
    trials = [value] + [
        INF if rng.random() < 0.4 else value + 10.0 * rng.integers(1, 30) for _ in range(4)
    ]
    return [float(t) for t in rng.permutation(trials)]


def _per_study() -> dict[str, dict[str, list[list[float]]]]:
    """Five submissions x eight workloads x three studies x five trials of times to target,
    fixed seed. Random workloads w2..w6, and hand-made ones:

    - w0: ``fast`` 100 and ``twin`` 100 (a tie at the best), ``mid`` 400 (ratio exactly 4),
      ``slow`` 410 (ratio 4.1: beyond AlgoPerf's 4x cut-off), ``never`` inf;
    - w1: ``mid`` studies [200, inf, 400] (median 400), ``slow`` [inf, 300, inf] (median inf),
      ``fast`` 160 (ratio exactly 2.5 for ``mid``), ``twin`` the same trials as ``mid`` (a tie
      above the best);
    - w7: nobody reaches it; ``never`` reaches nothing anywhere.
    """
    rng = np.random.default_rng(20240501)
    speed = {"fast": 1.0, "mid": 1.6, "slow": 3.0, "twin": 1.1}
    miss = {"fast": 0.2, "mid": 0.3, "slow": 0.8, "twin": 0.5}
    data: dict[str, dict[str, list[list[float]]]] = {s: {} for s in SUBMISSIONS}
    for w in WORKLOADS[2:7]:
        base = 10.0 * rng.integers(10, 60)
        for s in speed:
            studies = []
            for _ in range(STUDIES):
                trials = [
                    INF
                    if rng.random() < miss[s]
                    else 10.0 * round(base * speed[s] * rng.uniform(1.0, 3.0) / 10.0)
                    for _ in range(TRIALS)
                ]
                studies.append(trials)
            data[s][w] = studies
    # w0
    data["fast"]["w0"] = [_study(v, rng) for v in (90.0, 100.0, 130.0)]
    data["twin"]["w0"] = [_study(v, rng) for v in (100.0, 100.0, INF)]
    data["mid"]["w0"] = [_study(v, rng) for v in (400.0, 380.0, 500.0)]
    data["slow"]["w0"] = [_study(v, rng) for v in (INF, 410.0, 400.0)]
    # w1
    data["fast"]["w1"] = [_study(v, rng) for v in (160.0, 150.0, 170.0)]
    data["mid"]["w1"] = [_study(v, rng) for v in (200.0, INF, 400.0)]
    data["twin"]["w1"] = [list(t) for t in data["mid"]["w1"]]
    data["slow"]["w1"] = [_study(v, rng) for v in (INF, 300.0, INF)]
    # w7 and ``never``
    for s in speed:
        data[s][UNREACHED] = [[INF] * TRIALS for _ in range(STUDIES)]
    data["never"] = {w: [[INF] * TRIALS for _ in range(STUDIES)] for w in WORKLOADS}
    return data


PER_STUDY = _per_study()


@pytest.fixture(scope="module")
def port_times() -> np.ndarray:
    subs, wls, times = ap.times_to_target(PER_STUDY)
    assert subs == SUBMISSIONS and wls == WORKLOADS
    return times


@pytest.fixture(scope="module")
def project_ratios(port_times: np.ndarray) -> dict[str, dict[str, float]]:
    """The project's ``ratios`` of the per-workload times that AlgoPerf's study rule gives."""
    times = {
        s: {w: float(port_times[i, j]) for j, w in enumerate(WORKLOADS)}
        for i, s in enumerate(SUBMISSIONS)
    }
    return scoring.ratios(times)


def _as_array(ratio: dict[str, dict[str, float]]) -> np.ndarray:
    return np.array([[ratio[s][w] for w in WORKLOADS] for s in SUBMISSIONS])


# --- the port itself, on hand-computed examples ------------------------------------------------


def test_study_rule_by_hand() -> None:
    assert ap.study_time_to_target([INF, 300.0, 200.0]) == 200.0  # fastest reaching trial
    assert ap.study_time_to_target([INF, INF]) == INF
    assert ap.workload_time_to_target([[200.0], [INF], [400.0]]) == 400.0  # median, not min
    assert ap.workload_time_to_target([[INF, 200.0], [INF, 300.0], [100.0, INF]]) == 200.0
    assert ap.workload_time_to_target([[INF], [INF, 300.0], [INF]]) == INF  # 2 of 3 missed
    assert ap.workload_time_to_target([[100.0], [INF]]) == INF  # even: mean of 100 and inf


def test_best_trial_index_by_hand() -> None:
    """``get_best_trial_index``: the smallest first-reaching eval index, first trial on a tie."""
    loss = [[3.0, 2.0, 1.0], [3.0, 1.5, 1.0], [2.5, 1.9, 0.5], [9.0, 9.0, 9.0]]
    assert ap.best_trial_index(loss, 2.0) == (0, 1)  # trials 0 and 2 both at index 1
    assert ap.best_trial_index(loss, 2.5) == (2, 0)
    assert ap.best_trial_index(loss, 0.1) == (-1, -1)
    assert ap.best_trial_index([[0.1, 0.5], [0.6, 0.7]], 0.6, minimize=False) == (1, 0)
    # On a common eval schedule that is the fastest reaching trial ...
    common = [[100.0, 200.0, 300.0]] * 4
    assert ap.study_time_to_target_from_evals(common, loss, 2.0) == 200.0
    # ... but AlgoPerf compares eval indices, not times: trial 1 reaches the target sooner in
    # time (120 s, its third eval) than trial 0 (200 s, its second eval), and trial 0 is taken.
    times = [[100.0, 200.0, 300.0], [50.0, 80.0, 120.0]]
    curves = [[3.0, 1.0, 1.0], [3.0, 3.0, 1.0]]
    assert ap.study_time_to_target_from_evals(times, curves, 1.0) == 200.0
    assert ap.study_time_to_target([200.0, 120.0]) == 120.0


def test_port_profile_and_score_by_hand() -> None:
    """Two submissions on eight workloads; grid 1, 2, 3, 4."""
    a = [100.0] * 8
    b = [200.0, 200.0, 200.0, 200.0, 50.0, INF, 400.0, 401.0]
    # ratios a: 1 1 1 1 2 1 1 1; b: 2 2 2 2 1 inf 4 (=400/100) inf (401 > 4 * 100: cut off)
    cols, rho = ap.compute_performance_profiles(np.array([a, b]), num_points=4)
    np.testing.assert_array_equal(cols, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(rho[0], [7 / 8, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rho[1], [1 / 8, 5 / 8, 5 / 8, 6 / 8])
    scores = ap.compute_leaderboard_score(cols, rho)
    assert scores[0] == pytest.approx(((7 / 8 + 1) / 2 + 2) / 3)
    assert scores[1] == pytest.approx(((1 / 8 + 5 / 8) / 2 + 5 / 8 + (5 / 8 + 6 / 8) / 2) / 3)
    assert ap.compute_leaderboard_score(cols, rho, normalize=False)[0] == pytest.approx(
        (7 / 8 + 1) / 2 + 2
    )
    # max_tau=None: the largest finite ratio (4.0); log scale: log10 columns, rho at the points.
    assert ap.tau_points(ap.performance_ratios(np.array([a, b])), max_tau=None)[-1] == 4.0
    cols, rho = ap.compute_performance_profiles(np.array([a, b]), num_points=3, scale="log")
    np.testing.assert_allclose(cols, [0.0, math.log10(2.0), math.log10(4.0)])
    np.testing.assert_array_equal(rho[1], [1 / 8, 5 / 8, 6 / 8])


def test_nobody_reaches_keeps_inf() -> None:
    """``inf / inf`` is NaN, which ``DataFrame.update`` skips: the time (inf) stays."""
    r = ap.performance_ratios(np.array([[INF, 10.0], [INF, 30.0]]))
    np.testing.assert_array_equal(r, [[INF, 1.0], [INF, 3.0]])


# --- the fixture is what it claims to be -------------------------------------------------------


def test_fixture_covers_the_cases(port_times: np.ndarray) -> None:
    s, w = SUBMISSIONS.index, WORKLOADS.index
    assert all(len(PER_STUDY[x][y]) == STUDIES for x in SUBMISSIONS for y in WORKLOADS)
    assert all(len(t) == TRIALS for x in SUBMISSIONS for y in WORKLOADS for t in PER_STUDY[x][y])
    assert np.isinf(port_times[:, w(UNREACHED)]).all()
    assert np.isinf(port_times[s("never")]).all()
    assert port_times[s("mid"), w("w1")] == 400.0  # studies 200, inf, 400
    assert port_times[s("slow"), w("w1")] == INF  # studies inf, 300, inf
    ratio = ap.performance_ratios(port_times, cutoff=None)
    assert ratio[s("fast"), w("w0")] == ratio[s("twin"), w("w0")] == 1.0
    assert ratio[s("mid"), w("w0")] == 4.0 and ratio[s("slow"), w("w0")] == 4.1
    assert ratio[s("mid"), w("w1")] == ratio[s("twin"), w("w1")] == 2.5
    finite = ratio[np.isfinite(ratio)]
    assert (finite > 4.0).sum() >= 2  # ratios the 4x cut-off removes
    assert ((finite > 1.0) & (finite < 4.0)).sum() >= 8
    assert np.isinf(ratio[:4, :7]).sum() >= 1  # a workload others reach and one misses
    assert np.isinf(PER_STUDY["fast"]["w2"] + PER_STUDY["slow"]["w2"]).any()  # missed trials


# --- the project against the port ----------------------------------------------------------------


def test_project_median_is_the_median_over_studies(port_times: np.ndarray) -> None:
    for i, s in enumerate(SUBMISSIONS):
        for j, w in enumerate(WORKLOADS):
            per_study = [ap.study_time_to_target(t) for t in PER_STUDY[s][w]]
            assert scoring.median_time(per_study) == port_times[i, j], (s, w)


def test_ratios_equal(port_times: np.ndarray, project_ratios: dict) -> None:
    """Exactly, inf where inf, against the division step alone (``cutoff=None``)."""
    np.testing.assert_array_equal(
        _as_array(project_ratios), ap.performance_ratios(port_times, cutoff=None)
    )


def test_ratios_beyond_4_are_inf_in_algoperf(port_times: np.ndarray, project_ratios: dict) -> None:
    """Disagreement: AlgoPerf sets a time over 4x the fastest to inf; the project keeps its
    finite ratio. Equal everywhere else."""
    project, port = _as_array(project_ratios), ap.performance_ratios(port_times)
    beyond = np.isfinite(project) & (project > ap.CUTOFF)
    assert beyond.any()
    assert np.isinf(port[beyond]).all()
    np.testing.assert_array_equal(project[~beyond], port[~beyond])


def test_profile_equal_at_every_grid_tau(port_times: np.ndarray, project_ratios: dict) -> None:
    taus, rho = ap.compute_performance_profiles(port_times)
    assert len(taus) == ap.NUM_POINTS and taus[0] == 1.0 and taus[-1] == scoring.TAU_MAX
    for i, s in enumerate(SUBMISSIONS):
        project = [scoring.profile(project_ratios[s], float(t)) for t in taus]
        np.testing.assert_array_equal(project, rho[i], err_msg=s)
    assert rho[SUBMISSIONS.index("never")].max() == 0.0
    assert len({tuple(r) for r in rho}) == len(SUBMISSIONS)  # the profiles tell them apart


@pytest.mark.parametrize("num_points", [100, 7])
def test_score_within_the_trapezoid_error(
    port_times: np.ndarray, project_ratios: dict, num_points: int
) -> None:
    """Per workload the profile is a step at its ratio r: exact on every grid interval except
    the one holding r, where the trapezoid puts h/2 against an exact area in [0, h), h the grid
    step. So |diff| <= h / 2 / (tau_max - 1) = 1 / (2 (num_points - 1)) after normalisation,
    inside the bound 1 / (num_points - 1)."""
    taus, rho = ap.compute_performance_profiles(port_times, num_points=num_points)
    port = ap.compute_leaderboard_score(taus, rho)
    project = np.array([scoring.score(project_ratios[s]) for s in SUBMISSIONS])
    diff = np.abs(project - port)
    assert (diff <= 1.0 / (num_points - 1)).all(), diff
    assert (diff <= 1.0 / (2 * (num_points - 1)) + 1e-12).all(), diff
    assert project[SUBMISSIONS.index("never")] == port[SUBMISSIONS.index("never")] == 0.0
    assert project.max() > 0.5 and len(set(project.round(6))) == len(SUBMISSIONS)


def test_score_converges(port_times: np.ndarray, project_ratios: dict) -> None:
    taus, rho = ap.compute_performance_profiles(port_times, num_points=100_000)
    port = ap.compute_leaderboard_score(taus, rho)
    project = np.array([scoring.score(project_ratios[s]) for s in SUBMISSIONS])
    np.testing.assert_allclose(project, port, rtol=0, atol=1e-4)


# --- where the two disagree by design ------------------------------------------------------------


def test_denominator_is_a_constant_in_algoperf(port_times: np.ndarray) -> None:
    """Disagreement: AlgoPerf's ``rho`` divides by ``NUM_BASE_WORKLOADS`` (8), the project's by
    the number of workloads scored. Equal on 8 workloads (above); on 5 AlgoPerf's profile and
    score are 5/8 of the project's, and equal once the port is given 5."""
    cols = [0, 2, 3, 5, 7]
    times = port_times[:, cols]
    ratio = scoring.ratios(
        {
            s: {WORKLOADS[c]: float(times[i, k]) for k, c in enumerate(cols)}
            for i, s in enumerate(SUBMISSIONS)
        }
    )
    taus, rho8 = ap.compute_performance_profiles(times)
    _, rho5 = ap.compute_performance_profiles(times, num_base_workloads=5)
    for i, s in enumerate(SUBMISSIONS):
        project = np.array([scoring.profile(ratio[s], float(t)) for t in taus])
        np.testing.assert_array_equal(project, rho5[i])
        np.testing.assert_allclose(project * 5 / 8, rho8[i], rtol=1e-15)
    s8 = ap.compute_leaderboard_score(taus, rho8)
    project = np.array([scoring.score(ratio[s]) for s in SUBMISSIONS])
    assert np.abs(project * 5 / 8 - s8).max() <= 1.0 / (2 * 99)
    assert np.abs(project - s8).max() > 0.1


def test_cutoff_matters_past_tau_4(port_times: np.ndarray, project_ratios: dict) -> None:
    """Disagreement: AlgoPerf's 4x cut-off is hard-coded; with ``tau_max`` 6 the project counts
    ratios in (4, 6] and AlgoPerf does not. Without the cut-off the port agrees again."""
    tau_max, n = 6.0, 100
    project = np.array([scoring.score(project_ratios[s], tau_max) for s in SUBMISSIONS])
    taus, rho = ap.compute_performance_profiles(port_times, max_tau=tau_max, num_points=n)
    with_cut = ap.compute_leaderboard_score(taus, rho)
    taus, rho = ap.compute_performance_profiles(port_times, max_tau=tau_max, cutoff=None)
    without_cut = ap.compute_leaderboard_score(taus, rho)
    bound = 1.0 / (2 * (n - 1)) + 1e-12
    assert (np.abs(project - without_cut) <= bound).all()
    assert np.abs(project - with_cut).max() > bound


def test_missing_workload_is_nan_in_algoperf() -> None:
    """A submission without runs on a workload: NaN in AlgoPerf's table (``pd.concat`` of the
    pivots), inf in the project's; both count it as not reached."""
    per_study = {"a": {"w0": [[10.0]], "w1": [[20.0]]}, "b": {"w0": [[30.0]]}}
    _, _, times = ap.times_to_target(per_study)
    port = ap.performance_ratios(times)
    assert np.isnan(port[1, 1])
    ratio = scoring.ratios({"a": {"w0": 10.0, "w1": 20.0}, "b": {"w0": 30.0}})
    assert ratio["b"]["w1"] == INF
    taus, rho = ap.compute_performance_profiles(times, num_base_workloads=2)
    for i, s in enumerate(["a", "b"]):
        np.testing.assert_array_equal([scoring.profile(ratio[s], float(t)) for t in taus], rho[i])
