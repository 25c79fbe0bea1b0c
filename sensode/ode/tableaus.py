"""Butcher tableaus of explicit Runge--Kutta methods, as validated data.

A tableau here describes one step of an explicit method in a layout that the
single generic step (`sensode.rk`) understands:

* ``a``, ``b``, ``c`` — the ``s`` stages of the method. A first-same-as-last
  stage is *not* listed: after every step the loop evaluates
  ``f_new = f(t + h, y1)`` anyway (it is the next step's first stage), so every
  method gets it for free and FSAL needs no special case.
* The *extended stage list* is ``K = [k_1, ..., k_s, f_new, x_1, ..., x_m]``:
  the stages, the derivative at the end of the step, then ``m`` optional extra
  stages used only by the dense output (DP8).
* ``b_err`` — weights over ``[k_1..k_s, f_new]`` of the embedded error
  estimate ``h * sum(b_err * K)`` (solution minus embedded solution).
* ``dense`` — a matrix ``[len(K), degree]``: the interpolant is
  ``y(t + theta h) = y0 + h * sum_i w_i(theta) K_i`` with
  ``w_i(theta) = sum_j dense[i, j] theta**(j + 1)``.

Everything derivable (stage count, whether the method is adaptive) is derived,
and the constructor checks the consistency conditions, so a wrong coefficient
fails at import time rather than as a slow loss of accuracy.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction as _F

import numpy as np
from numpy.polynomial import polynomial as _poly

__all__ = [
    "ButcherTableau",
    "hermite_dense",
    "EULER",
    "MIDPOINT",
    "HEUN",
    "RK4",
    "BS3",
    "DP5",
    "TSIT5",
    "DP8",
]

_TOL = 1e-12


def _arr(x) -> np.ndarray:
    return np.asarray([float(v) for v in x], dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """An explicit Runge--Kutta method as data.

    Args:
      name: short name used in messages.
      a: lower-triangular stage matrix, rows of lengths ``0..s-1`` (or a full
        ``[s, s]`` strictly lower-triangular array).
      b: ``[s]`` solution weights.
      c: ``[s]`` stage times (``c[0] == 0``).
      order: order of the solution.
      b_err: ``[s + 1]`` error weights over ``[k_1..k_s, f_new]`` or ``None``
        for a fixed-step method.
      error_order: order of the embedded solution, the exponent the step-size
        controller uses (``1 / (error_order + 1)``).
      b_err_secondary: optional second estimator combined as in DOP853
        (Hairer & Wanner's ``err5**2 / sqrt(err5**2 + 0.01 err3**2)``).
      dense: ``[s + 1 + m, degree]`` interpolation coefficients; ``None`` gives
        the cubic Hermite interpolant.
      extra_a: ``[m, s + 1 + m]`` stage rows of the extra dense-output stages.
      extra_c: ``[m]`` their times.
      dense_order: order of the dense output (its polynomial degree for the
        free interpolants used here).
    """

    name: str
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    error_order: int | None = None
    b_err_secondary: np.ndarray | None = None
    dense: np.ndarray | None = None
    extra_a: np.ndarray | None = None
    extra_c: np.ndarray | None = None
    dense_order: int = 3

    def __post_init__(self):
        s = len(self.b)
        b = _arr(self.b)
        c = _arr(self.c)
        a = np.zeros((s, s))
        for i, row in enumerate(self.a):
            row = _arr(row)
            if np.any(row[i:] != 0.0):
                raise ValueError(f"{self.name}: `a` must be strictly lower triangular")
            a[i, : min(len(row), i)] = row[: min(len(row), i)]
        if len(self.a) != s or len(c) != s:
            raise ValueError(f"{self.name}: a, b and c must describe the same number of stages")
        if abs(c[0]) > _TOL:
            raise ValueError(f"{self.name}: c[0] must be 0 for an explicit method")
        if np.max(np.abs(a.sum(axis=1) - c)) > 1e-10:
            raise ValueError(f"{self.name}: rows of `a` must sum to `c`")
        if abs(b.sum() - 1.0) > 1e-10:
            raise ValueError(f"{self.name}: sum(b) must be 1")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen)
        set_("a", a)
        set_("b", b)
        set_("c", c)
        for key in ("b_err", "b_err_secondary"):
            val = getattr(self, key)
            if val is not None:
                val = _arr(val)
                if len(val) != s + 1:
                    raise ValueError(f"{self.name}: `{key}` needs s + 1 = {s + 1} entries")
                if abs(val.sum()) > 1e-10:
                    raise ValueError(f"{self.name}: sum({key}) must be 0")
                set_(key, val)
        if (self.b_err is None) != (self.error_order is None):
            raise ValueError(f"{self.name}: give `b_err` and `error_order` together")
        m = 0
        if self.extra_a is not None:
            ea = np.asarray(self.extra_a, dtype=np.float64)
            ec = _arr(self.extra_c)
            m = ea.shape[0]
            if ea.shape != (m, s + 1 + m) or ec.shape != (m,):
                raise ValueError(f"{self.name}: extra stages need `extra_a` [m, s+1+m], `extra_c` [m]")
            for j in range(m):
                if np.any(ea[j, s + 1 + j :] != 0.0):
                    raise ValueError(f"{self.name}: extra stage {j} may only use earlier stages")
                # The f_new stage sits at time 1 with weights b.
                if abs(ea[j].sum() - ec[j]) > 1e-10:
                    raise ValueError(f"{self.name}: rows of `extra_a` must sum to `extra_c`")
            set_("extra_a", ea)
            set_("extra_c", ec)
        dense = self.dense
        if dense is None:
            if m:
                raise ValueError(f"{self.name}: extra stages make sense only with `dense`")
            dense = hermite_dense(b)
        dense = np.asarray(dense, dtype=np.float64)
        if dense.shape[0] != s + 1 + m:
            raise ValueError(f"{self.name}: `dense` needs {s + 1 + m} rows")
        # At theta = 1 the interpolant must reproduce the step itself.
        at_one = dense.sum(axis=1)
        expect = np.concatenate([b, np.zeros(1 + m)])
        if np.max(np.abs(at_one - expect)) > 1e-9:
            raise ValueError(f"{self.name}: dense output at theta=1 does not reproduce the step")
        set_("dense", dense)

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (the free end-of-step derivative not counted)."""
        return len(self.b)

    @property
    def extra_stages(self) -> int:
        """Extra stages evaluated only for dense output."""
        return 0 if self.extra_a is None else self.extra_a.shape[0]

    @property
    def adaptive(self) -> bool:
        """Whether the method carries an embedded error estimate."""
        return self.b_err is not None

    @property
    def dense_degree(self) -> int:
        return self.dense.shape[1]

    @property
    def dense_rows(self) -> tuple:
        """Indices of the extended stages the dense output actually uses."""
        return tuple(int(i) for i in np.flatnonzero(np.any(self.dense != 0.0, axis=1)))


def hermite_dense(b) -> np.ndarray:
    """Cubic Hermite interpolant through ``y0, f0, y1, f_new`` in the layout above.

    ``y(theta) = y0 + h [ (3θ² - 2θ³) Σ b_i k_i + (θ - 2θ² + θ³) k_1 + (θ³ - θ²) f_new ]``.
    """
    b = _arr(b)
    s = len(b)
    dense = np.zeros((s + 1, 3))
    dense[:s] = np.outer(b, [0.0, 3.0, -2.0])
    dense[0] += [1.0, -2.0, 1.0]
    dense[s] = [0.0, -1.0, 1.0]
    return dense


def _fr(*xs):
    return [float(_F(x)) if isinstance(x, str) else float(x) for x in xs]


# --- fixed-step methods ----------------------------------------------------------
EULER = ButcherTableau(name="Euler", a=[[]], b=[1.0], c=[0.0], order=1)
MIDPOINT = ButcherTableau(name="Midpoint", a=[[], [0.5]], b=[0.0, 1.0], c=[0.0, 0.5], order=2)
HEUN = ButcherTableau(name="Heun", a=[[], [1.0]], b=[0.5, 0.5], c=[0.0, 1.0], order=2)
RK4 = ButcherTableau(
    name="RK4",
    a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
    b=_fr("1/6", "1/3", "1/3", "1/6"),
    c=[0.0, 0.5, 0.5, 1.0],
    order=4,
)

# --- Bogacki--Shampine 3(2) -----------------------------------------------------
# Bogacki & Shampine, Appl. Math. Lett. 2 (1989). Cubic Hermite is its natural
# dense output (it uses f_new, the FSAL stage).
BS3 = ButcherTableau(
    name="BS3",
    a=[[], [0.5], [0.0, 0.75]],
    b=_fr("2/9", "1/3", "4/9"),
    c=[0.0, 0.5, 0.75],
    order=3,
    b_err=_fr("-5/72", "1/12", "1/9", "-1/8"),
    error_order=2,
    dense=[
        _fr(1, "-4/3", "5/9"),
        _fr(0, 1, "-2/3"),
        _fr(0, "4/3", "-8/9"),
        _fr(0, -1, 1),
    ],
    dense_order=3,
)

# --- Dormand--Prince 5(4) -------------------------------------------------------
# Dormand & Prince, J. Comput. Appl. Math. 6 (1980); dense output of
# Shampine, Math. Comp. 46 (1986) (4th order, free).
DP5 = ButcherTableau(
    name="DP5",
    a=[
        [],
        _fr("1/5"),
        _fr("3/40", "9/40"),
        _fr("44/45", "-56/15", "32/9"),
        _fr("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
        _fr("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
    ],
    b=_fr("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84"),
    c=_fr(0, "1/5", "3/10", "4/5", "8/9", 1),
    order=5,
    b_err=_fr("71/57600", 0, "-71/16695", "71/1920", "-17253/339200", "22/525", "-1/40"),
    error_order=4,
    dense=[
        _fr(1, "-8048581381/2820520608", "8663915743/2820520608", "-12715105075/11282082432"),
        _fr(0, 0, 0, 0),
        _fr(0, "131558114200/32700410799", "-68118460800/10900136933", "87487479700/32700410799"),
        _fr(0, "-1754552775/470086768", "14199869525/1410260304", "-10690763975/1880347072"),
        _fr(0, "127303824393/49829197408", "-318862633887/49829197408", "701980252875/199316789632"),
        _fr(0, "-282668133/205662961", "2019193451/616988883", "-1453857185/822651844"),
        _fr(0, "40617522/29380423", "-110615467/29380423", "69997945/29380423"),
    ],
    dense_order=4,
)


# --- Tsitouras 5(4) -------------------------------------------------------------
# Tsitouras, Comput. Math. Appl. 62 (2011). Coefficients and the free 4th order
# interpolant as used in OrdinaryDiffEq.jl / diffrax, given there in factored form.
def _tsit5_dense() -> np.ndarray:
    t = np.array([0.0, 1.0])
    mul = _poly.polymul

    def q(*roots_or_quads):
        out = np.array([1.0])
        for r in roots_or_quads:
            out = mul(out, r)
        return out

    def lin(r):
        return np.array([-r, 1.0])

    polys = [
        -1.0530884977290216 * q(t, lin(1.3299890189751412), [0.7139816917074209, -1.4364028541716351, 1.0]),
        0.1017 * q(t, t, [1.2949852507374631, -2.1966568338249754, 1.0]),
        2.490627285651252793 * q(t, t, [1.57803468208092486, -2.38535645472061657, 1.0]),
        -16.54810288924490272 * q(lin(1.21712927295533244), lin(0.61620406037800089), t, t),
        47.37952196281928122 * q(lin(1.203071208372362603), lin(0.658047292653547382), t, t),
        -34.87065786149660974 * q(lin(1.2), lin(0.666666666666666667), t, t),
        2.5 * q(lin(1.0), lin(0.6), t, t),
    ]
    dense = np.zeros((7, 4))
    for i, p in enumerate(polys):
        p = np.pad(p, (0, 5 - len(p)))
        dense[i] = p[1:5]
    return dense


_TSIT5_B = [
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
]
_TSIT5_BHAT = [
    0.09468075576583945,
    0.009183565540343254,
    0.4877705284247616,
    1.234297566930479,
    -2.7077123499835256,
    1.866628418170587,
    1.0 / 66.0,
]
TSIT5 = ButcherTableau(
    name="Tsit5",
    a=[
        [],
        [0.161],
        [-0.008480655492356989, 0.335480655492357],
        [2.8971530571054935, -6.359448489975075, 4.3622954328695815],
        [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
        [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383],
    ],
    b=_TSIT5_B,
    c=[0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0],
    order=5,
    b_err=[bi - bh for bi, bh in zip(_TSIT5_B + [0.0], _TSIT5_BHAT)],
    error_order=4,
    dense=_tsit5_dense(),
    dense_order=4,
)


# --- Dormand--Prince 8(5,3) ("DOP853") --------------------------------------------
# Hairer, Nørsett & Wanner, Solving ODEs I, Sec. II.10; coefficients of the
# Fortran DOP853. 12 stages, f_new, then 3 extra stages for the 7th-order
# dense output, which is converted below into the polynomial layout.
_DP8_A = [
    [],
    [0.05260015195876773],
    [0.0197250569845379, 0.0591751709536137],
    [0.02958758547680685, 0.0, 0.08876275643042054],
    [0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792],
    [0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242],
    [0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125],
    [0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328, -0.015319437748624402,
     0.008273789163814023],
    [0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726, 27.59209969944671,
     20.154067550477894, -43.48988418106996],
    [0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843, 21.230051448181193,
     15.279233632882423, -33.28821096898486, -0.020331201708508627],
    [-0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295, -8.149787010746927,
     -18.52006565999696, 22.739487099350505, 2.4936055526796523, -3.0467644718982196],
    [2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188,
     27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303, 0.6433927460157636],
]
_DP8_B = [0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
          -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034,
          0.04471061572777259]
_DP8_C = [0.0, 0.05260015195876773, 0.0789002279381516, 0.1183503419072274, 0.2816496580927726,
          0.3333333333333333, 0.25, 0.3076923076923077, 0.6512820512820513, 0.6, 0.8571428571428571, 1.0]
_DP8_E3 = [-0.18980075407240762, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
           -5.801203960010585, -0.4226823213237919, -0.1521609496625161, 0.20136540080403034,
           0.02265179219836082, 0.0]
_DP8_E5 = [0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502,
           1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571,
           -0.022355307863886294, 0.0]
_DP8_EXTRA_A = [
    [0.056167502283047954, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25350021021662483, -0.2462390374708025,
     -0.12419142326381637, 0.15329179827876568, 0.00820105229563469, 0.007567897660545699, -0.008298],
    [0.03183464816350214, 0.0, 0.0, 0.0, 0.0, 0.028300909672366776, 0.053541988307438566,
     -0.05492374857139099, 0.0, 0.0, -0.00010834732869724932, 0.0003825710908356584,
     -0.00034046500868740456, 0.1413124436746325],
    [-0.42889630158379194, 0.0, 0.0, 0.0, 0.0, -4.697621415361164, 7.683421196062599, 4.06898981839711,
     0.3567271874552811, 0.0, 0.0, 0.0, -0.0013990241651590145, 2.9475147891527724, -9.15095847217987],
]
_DP8_EXTRA_C = [0.1, 0.2, 0.7777777777777778]
_DP8_D = [
    [-8.428938276109013, 0.0, 0.0, 0.0, 0.0, 0.5667149535193777, -3.0689499459498917, 2.38466765651207,
     2.117034582445028, -0.871391583777973, 2.2404374302607883, 0.6315787787694688, -0.08899033645133331,
     18.148505520854727, -9.194632392478356, -4.436036387594894],
    [10.427508642579134, 0.0, 0.0, 0.0, 0.0, 242.28349177525817, 165.20045171727028, -374.5467547226902,
     -22.113666853125306, 7.733432668472264, -30.674084731089398, -9.332130526430229, 15.697238121770845,
     -31.139403219565178, -9.35292435884448, 35.81684148639408],
    [19.985053242002433, 0.0, 0.0, 0.0, 0.0, -387.0373087493518, -189.17813819516758, 527.8081592054236,
     -11.57390253995963, 6.8812326946963, -1.0006050966910838, 0.7777137798053443, -2.778205752353508,
     -60.19669523126412, 84.32040550667716, 11.99229113618279],
    [-25.69393346270375, 0.0, 0.0, 0.0, 0.0, -154.18974869023643, -231.5293791760455, 357.6391179106141,
     93.40532418362432, -37.45832313645163, 104.0996495089623, 29.8402934266605, -43.53345659001114,
     96.32455395918828, -39.17726167561544, -149.72683625798564],
]


def _dp8_dense() -> np.ndarray:
    """Expand DOP853's nested dense-output formula into per-stage polynomials.

    With ``x = theta`` and ``Δ = h Σ b_i k_i`` the interpolant is
    ``y0 + x(F0 + (1-x)(F1 + x(F2 + (1-x)(F3 + x(F4 + (1-x)(F5 + x F6))))))``
    with ``F0 = Δ``, ``F1 = h k_1 - Δ``, ``F2 = 2Δ - h(f_new + k_1)`` and
    ``F3..F6 = h D K``; every ``F_j`` is ``h`` times a weight vector over the 16
    extended stages, so the whole expression is linear in them.
    """
    n = 16
    b = np.zeros(n)
    b[:12] = _DP8_B
    e0 = np.zeros(n)
    e0[0] = 1.0
    e_new = np.zeros(n)
    e_new[12] = 1.0
    weights = [b, e0 - b, 2.0 * b - e_new - e0] + [np.asarray(row) for row in _DP8_D]
    x = np.array([0.0, 1.0])
    omx = np.array([1.0, -1.0])
    dense = np.zeros((n, 7))
    for k in range(n):
        acc = np.array([0.0])
        for j in range(6, -1, -1):
            acc = _poly.polyadd(acc, [weights[j][k]])
            acc = _poly.polymul(acc, x if j % 2 == 0 else omx)
        acc = np.pad(acc, (0, 8 - len(acc)))
        dense[k] = acc[1:8]
    return dense


DP8 = ButcherTableau(
    name="DP8",
    a=_DP8_A,
    b=_DP8_B,
    c=_DP8_C,
    order=8,
    b_err=_DP8_E5,
    b_err_secondary=_DP8_E3,
    error_order=7,
    dense=_dp8_dense(),
    extra_a=[row + [0.0] * (16 - len(row)) for row in _DP8_EXTRA_A],
    extra_c=_DP8_EXTRA_C,
    dense_order=7,
)
