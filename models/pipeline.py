"""wattwise power models: data, model form, fitting, ONNX export and the agent's calibration.

Shared by ``train.py`` (the shipped models) and ``report.py`` (the leave-one-server-out accuracy
report). Everything here is deterministic: inputs are sorted, there is no randomness at all (the
fit is a convex problem solved by a fixed number of projected-gradient steps from a fixed start),
fitted weights are rounded before they are written, and the ONNX files carry no timestamps.
See models/README.md for the model form and how temperature enters.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPEC_CSV = REPO / "data" / "specpower" / "specpower_ssj2008_all_results.csv"
SANITY_CSV = REPO / "data" / "specpower" / "sanity_numbers.csv"
GRC_CSV = REPO / "data" / "specpower" / "server_power_vs_inlet_temp.csv"

VERSION = "2026.11.0"
PRODUCER = "wattwise-models"

#: SPECpower's load levels: idle, 10 %, …, 100 % (as CPU utilisation fractions).
LEVELS = np.array([i / 10 for i in range(11)])
LEVEL_NAMES = ["idle"] + [f"{p} %" for p in range(10, 101, 10)]
WATT_COLUMNS = ["idle_w"] + [f"w_at_{p}" for p in range(10, 101, 10)]
INLET_COLUMNS = ["inlet_min_c_idle"] + [f"inlet_min_c_at_{p}" for p in range(10, 101, 10)]

#: The model's input columns, in order (the agent's feature vocabulary; the BMC's "CPU1 Temp" is
#: socket 0 = cpu0_celsius, "CPU2 Temp" is cpu1_celsius).
INPUTS = ("cpu_utilisation", "inlet_celsius", "cpu0_celsius", "cpu1_celsius", "idle_over_peak")
#: Normalisation ranges written to the metadata: the agent feeds (x − min) / (max − min) and the
#: graph undoes it. They are also the agent's probe grid (18–35 °C inlet, 35–90 °C CPU).
INLET_RANGE = (18.0, 35.0)
CPU_RANGE = (35.0, 90.0)
#: Used by the agent when a sensor is missing: the reference inlet (no temperature effect) and a
#: mid CPU temperature (which has no effect; see README).
DEFAULT_INLET = 23.0
DEFAULT_CPU = 60.0

#: Knots of the shape model: utilisation (SPECpower's levels) and idle/peak ratio.
U_KNOTS = LEVELS
R_KNOTS = np.array([0.08, 0.12, 0.16, 0.20, 0.25, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80])

#: Fit settings (chosen a priori, not tuned on the report): mean squared relative error over the
#: 9 interior levels per server + smoothness of the shape across idle/peak knots (+ for class
#: models, shrinkage toward the generic shape).
SMOOTHNESS = 0.05
CLASS_SHRINKAGE = 0.02
RIDGE = 1e-6
ITERATIONS = 3000
#: Weights are rounded to this many decimals before export, so last-bit differences of the float
#: arithmetic between machines do not change the files.
DECIMALS = 6

#: Held out of the shipped models (not of the leave-one-out report): 1 in HOLD_OUT_MODULUS servers,
#: by the SHA-256 of the result id.
HOLD_OUT_MODULUS = 20

#: Hardware eras for the class models (hardware availability year, inclusive).
ERAS = (("early", 0, 2009), ("mid", 2010, 2016), ("recent", 2017, 9999))


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Server:
    result_id: str
    url: str
    name: str
    year: int
    sockets: int
    cores: int
    threads: int
    watts: tuple  # 11 levels, published average active power (W)
    inlet: tuple  # 11 levels, minimum inlet temperature (°C)

    @property
    def idle(self) -> float:
        return self.watts[0]

    @property
    def peak(self) -> float:
        return self.watts[-1]

    @property
    def idle_over_peak(self) -> float:
        return self.watts[0] / self.watts[-1]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_servers(path: Path = SPEC_CSV) -> list[Server]:
    """Every single-node result (``nodes == 1``), sorted by result id."""
    servers = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["nodes"] != "1":
                continue
            watts = tuple(float(row[c]) for c in WATT_COLUMNS)
            inlet = tuple(float(row[c]) for c in INLET_COLUMNS)
            if any(b < a for a, b in zip(watts, watts[1:])):
                raise ValueError(f"{row['result_id']}: power falls with load: {watts}")
            servers.append(
                Server(
                    result_id=row["result_id"],
                    url=row["url"],
                    name=row["system_name"],
                    year=int(row["year"]),
                    sockets=int(row["sockets_per_node"]),
                    cores=int(row["cores_per_node"]),
                    threads=int(row["threads_per_node"]),
                    watts=watts,
                    inlet=inlet,
                )
            )
    servers.sort(key=lambda s: s.result_id)
    return servers


def is_held_out(server: Server) -> bool:
    digest = hashlib.sha256(server.result_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % HOLD_OUT_MODULUS == 0


def server_class(server: Server) -> str:
    """Class name: socket count and (except for 4+ sockets, too few to split) hardware era."""
    if server.sockets >= 4:
        return "4s-plus"
    era = next(name for name, lo, hi in ERAS if lo <= server.year <= hi)
    return f"{server.sockets}s-{era}"


def class_description(name: str) -> str:
    if name == "4s-plus":
        return "4 or more sockets, any hardware year"
    sockets, era = name.split("-")
    _, lo, hi = next(e for e in ERAS if e[0] == era)
    years = f"up to {hi}" if lo == 0 else (f"{lo} or later" if hi == 9999 else f"{lo}–{hi}")
    return f"{sockets[:-1]} socket{'s' if sockets != '1s' else ''}, hardware year {years}"


# --------------------------------------------------------------------------------------------
# Temperature


@dataclass(frozen=True)
class InletEffect:
    """P(T) = P(reference) · (1 + slope · max(0, T − reference) + extra · max(0, T − knee))."""

    reference: float
    slope: float
    knee: float
    extra: float

    def factor(self, t):
        t = np.asarray(t, dtype=float)
        return (
            1.0
            + self.slope * np.maximum(0.0, t - self.reference)
            + self.extra * np.maximum(0.0, t - self.knee)
        )

    def formula(self) -> str:
        return (
            f"1 + {self.slope:g}*max(0, inlet - {self.reference:g}) "
            f"+ {self.extra:g}*max(0, inlet - {self.knee:g})"
        )


def _range(text: str) -> tuple[float, float]:
    lo, hi = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", text).groups()
    return float(lo), float(hi)


def inlet_effect(sanity: Path = SANITY_CSV, grc: Path = GRC_CSV) -> InletEffect:
    """The inlet-temperature term, from the published figures only.

    - slope: the midpoint of the room-wide sensitivity in sanity_numbers.csv (0.35–0.5 %/°C),
      applied above the lower end of the range it was measured over (23 °C);
    - extra slope above the knee where the Dell R410 table (server_power_vs_inlet_temp.csv,
      "grows super-linearly above ~33 °C") bends: the least-squares hinge fit of P/P(27 °C)
      = c + s·(T − 27) + extra·max(0, T − 33) to that table.
    """
    with sanity.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["topic"] == "temperature"]
    sens = next(r for r in rows if r["quantity"].startswith("server power sensitivity to inlet"))
    assert sens["unit"] == "%/°C", sens
    lo, hi = _range(sens["value"])
    reference, _ = _range(re.search(r"([0-9]+-[0-9]+) °C", sens["conditions"]).group(1))
    r410 = next(r for r in rows if "R410" in r["quantity"])
    knee = float(re.search(r"above ~([0-9.]+) °C", r410["conditions"]).group(1))

    with grc.open(newline="", encoding="utf-8") as f:
        table = [(float(r["inlet_c"]), float(r["power_w"])) for r in csv.DictReader(f)]
    t = np.array([x for x, _ in table])
    p = np.array([y for _, y in table]) / table[0][1]
    design = np.column_stack([np.ones_like(t), t - t[0], np.maximum(0.0, t - knee)])
    coef, *_ = np.linalg.lstsq(design, p, rcond=None)
    return InletEffect(
        reference=reference,
        slope=round((lo + hi) / 2 / 100, 6),
        knee=knee,
        extra=round(float(coef[2]), 6),
    )


# --------------------------------------------------------------------------------------------
# Model form


def hats(r) -> np.ndarray:
    """Piecewise-linear interpolation weights of idle/peak ratio(s) r over R_KNOTS: [n, J]."""
    r = np.clip(np.asarray(r, dtype=float).reshape(-1, 1), R_KNOTS[0], R_KNOTS[-1])
    left, inv_left, right, inv_right = _hat_constants()
    return np.maximum(0.0, np.minimum((r - left) * inv_left, (right - r) * inv_right))


def _hat_constants():
    c = R_KNOTS
    left = np.concatenate([[c[0] - 1.0], c[:-1]])
    right = np.concatenate([c[1:], [c[-1] + 1.0]])
    inv_left = 1.0 / (c - left)
    inv_right = 1.0 / (right - c)
    return left, inv_left, right, inv_right


def ramps(u) -> np.ndarray:
    """The monotone basis over utilisation: ramp k rises 0 → 1 across [U_k, U_k+1]: [n, K]."""
    u = np.asarray(u, dtype=float).reshape(-1, 1)
    lo, width = U_KNOTS[:-1], np.diff(U_KNOTS)
    return np.clip((u - lo) / width, 0.0, 1.0)


@dataclass
class PowerModel:
    """P / P_peak = (r + (1 − r) · g(u; r)) · inlet factor, g = Σ_k w_k(r) · ramp_k(u).

    w(r) interpolates the rows of ``weights`` (one per R_KNOT) linearly in r; every row lies on the
    probability simplex (non-negative, sums to 1), so g rises from 0 at u = 0 to 1 at u = 1 and
    can never fall: the curve is non-decreasing in utilisation by construction.
    """

    name: str
    weights: np.ndarray  # [J, K]
    default_idle_over_peak: float
    default_peak_watts: float
    inlet: InletEffect
    training_data: str
    description: str
    servers: int = 0  # how many results it was trained on

    def fraction(self, u, r, inlet_c=DEFAULT_INLET) -> np.ndarray:
        u = np.asarray(u, dtype=float).reshape(-1)
        r = np.broadcast_to(np.asarray(r, dtype=float), u.shape).reshape(-1)
        wr = hats(r) @ self.weights
        g = np.sum(wr * ramps(u), axis=1)
        rc = np.clip(r, 0.0, 1.0)
        return (rc + (1.0 - rc) * g) * self.inlet.factor(np.broadcast_to(inlet_c, u.shape))

    def resolve(self, idle=None, peak=None) -> tuple[float, float]:
        """(idle/peak ratio, peak watts) as the agent resolves them from its config."""
        r = idle / peak if idle is not None and peak is not None else self.default_idle_over_peak
        return r, (peak if peak is not None else self.default_peak_watts)

    def watts(self, u, inlet_c=DEFAULT_INLET, idle=None, peak=None) -> np.ndarray:
        r, p = self.resolve(idle, peak)
        return p * self.fraction(u, r, inlet_c)


# --------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class Target:
    """One server's curve at the reference inlet: f = P / P(100 %), r = f(idle)."""

    f: np.ndarray
    r: float
    peak: float


def reference_curve(server: Server, effect: InletEffect) -> Target:
    """Published watts divided by the inlet factor at each level's measured inlet."""
    p = np.array(server.watts) / effect.factor(np.array(server.inlet))
    return Target(f=p / p[-1], r=float(p[0] / p[-1]), peak=float(p[-1]))


def server_terms(t: Target) -> tuple[np.ndarray, np.ndarray]:
    """One server's weighted least-squares terms (AᵀA, Aᵀy) on the 9 interior levels, relative
    error (rows divided by the measured fraction)."""
    j, k = len(R_KNOTS), len(U_KNOTS) - 1
    u = LEVELS[1:-1]
    h = hats(t.r)[0]
    a = (1.0 - t.r) * np.einsum("j,lk->ljk", h, ramps(u)).reshape(len(u), j * k)
    w = 1.0 / t.f[1:-1]
    aw = a * w[:, None]
    return aw.T @ aw, aw.T @ ((t.f[1:-1] - t.r) * w)


def normal_equations(targets: list[Target]):
    j, k = len(R_KNOTS), len(U_KNOTS) - 1
    ata = np.zeros((j * k, j * k))
    atb = np.zeros(j * k)
    for t in targets:
        a, b = server_terms(t)
        ata += a
        atb += b
    return ata, atb, len(targets)


def _project_rows_to_simplex(m: np.ndarray) -> np.ndarray:
    n, k = m.shape
    s = -np.sort(-m, axis=1)
    css = np.cumsum(s, axis=1) - 1.0
    idx = np.arange(1, k + 1)
    cond = s - css / idx > 0
    rho = k - 1 - np.argmax(cond[:, ::-1], axis=1)
    theta = css[np.arange(n), rho] / (rho + 1)
    return np.maximum(m - theta[:, None], 0.0)


def fit_weights(normal, prior: np.ndarray | None = None) -> np.ndarray:
    """Minimises mean_servers Σ_levels rel.err² + SMOOTHNESS·‖D²W‖² (+ CLASS_SHRINKAGE·‖W − prior‖²)
    over W with every row on the simplex, by FISTA (fixed step 1/L, fixed iteration count)."""
    j, k = len(R_KNOTS), len(U_KNOTS) - 1
    ata, atb, n = normal
    d2 = np.zeros((j - 2, j))
    for i in range(j - 2):
        d2[i, i : i + 3] = [1.0, -2.0, 1.0]
    smooth = np.kron(d2.T @ d2, np.eye(k))
    uniform = np.full(j * k, 1.0 / k)
    shrink = CLASS_SHRINKAGE if prior is not None else 0.0
    anchor = prior.reshape(-1) if prior is not None else uniform
    hess = 2.0 * (ata / n + SMOOTHNESS * smooth + (shrink + RIDGE) * np.eye(j * k))
    lin = 2.0 * (atb / n + (shrink + RIDGE) * anchor)
    step = 1.0 / float(np.linalg.eigvalsh(hess)[-1])

    x = (prior.copy() if prior is not None else np.full((j, k), 1.0 / k)).reshape(-1)
    z, t = x.copy(), 1.0
    for _ in range(ITERATIONS):
        grad = hess @ z - lin
        x_new = _project_rows_to_simplex((z - step * grad).reshape(j, k)).reshape(-1)
        if np.dot(z - x_new, x_new - x) > 0:  # adaptive restart keeps it monotone
            t = 1.0
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x.reshape(j, k)


def round_weights(w: np.ndarray) -> np.ndarray:
    """Rounds to DECIMALS and puts each row back on the simplex (the rounding error goes to the
    largest entry), so exported weights are exact, short decimals that still sum to 1."""
    w = np.round(np.maximum(w, 0.0), DECIMALS)
    for row in w:
        i = int(np.argmax(row))
        row[i] = round(row[i] + (1.0 - row.sum()), DECIMALS)
    return w


def train(
    servers: list[Server],
    effect: InletEffect,
    name: str,
    training_data: str,
    description: str,
    prior: np.ndarray | None = None,
    normal=None,
) -> PowerModel:
    """Fits a model to `servers` (``normal``: their precomputed normal equations, to save time)."""
    targets = [reference_curve(s, effect) for s in servers]
    weights = round_weights(fit_weights(normal or normal_equations(targets), prior))
    return PowerModel(
        name=name,
        weights=weights,
        default_idle_over_peak=round(float(np.median([t.r for t in targets])), 3),
        default_peak_watts=round(float(np.median([t.peak for t in targets])), 0),
        inlet=effect,
        training_data=training_data,
        description=description,
        servers=len(servers),
    )


# --------------------------------------------------------------------------------------------
# Calibration (mirrors the agent's online calibration exactly)

#: Load levels ("bins") at 0, 5, …, 100 % utilisation.
CAL_BINS = 21
#: N: samples a bin averages over (the agent's `calibration.memory_samples` default).
CAL_MEMORY = 300
#: ρ: the pull toward the model as it is (a = 1, b = 0).
CAL_RIDGE = 0.001
CAL_A = (0.1, 10.0)
CAL_B = (-1.0, 1.0)


def calibration_bin(utilisation: float) -> int:
    """round(u · 20) for u clamped to 0..1, halves rounded away from zero (Rust's f64::round)."""
    x = min(max(utilisation, 0.0), 1.0) * 20.0
    whole = math.floor(x)
    return int(whole) + (1 if x - whole >= 0.5 else 0)


@dataclass
class Calibration:
    """P_measured ≈ a · P_model + b · S by least squares over per-load-level means.

    S = the model's uncalibrated prediction at u = 1 and its input defaults (watts); x =
    P_model / S, y = P_measured / S. 21 bins at 0, 5, …, 100 % (bin = round(20 u)) each keep a
    count n (capped at N) and means x̄, ȳ: on a sample n = min(n + 1, N), x̄ += (x − x̄) / n, ȳ
    likewise. Fit with w = n / N: minimise Σ w (ȳ − a x̄ − b)² + ρ ((a − 1)² + b²), ρ = 0.001, in
    closed form; if a falls outside [0.1, 10] it is clamped and b re-solved for it, then b is
    clamped to [−1, 1]. Refitted after every sample. The calibrated prediction is
    max(0, a · P_model + b · S). Mirrors agent/src/model/calibration.rs operation for operation
    (plain Python floats, same order), so both give the same bits.
    """

    scale: float
    memory: int
    n: list
    xbar: list
    ybar: list
    theta: tuple

    @classmethod
    def start(cls, scale: float, memory: int = CAL_MEMORY) -> "Calibration":
        return cls(
            scale=float(scale),
            memory=int(memory),
            n=[0] * CAL_BINS,
            xbar=[0.0] * CAL_BINS,
            ybar=[0.0] * CAL_BINS,
            theta=(1.0, 0.0),
        )

    def update(self, utilisation: float, model_watts: float, measured_watts: float) -> None:
        """Feeds one sample; an invalid one raises ValueError and changes nothing."""
        utilisation, model_watts, measured_watts = (
            float(utilisation), float(model_watts), float(measured_watts)
        )
        if not math.isfinite(measured_watts) or measured_watts <= 0.0:
            raise ValueError(f"measured watts {measured_watts}")
        if not (math.isfinite(model_watts) and model_watts >= 0.0):
            raise ValueError(f"model watts {model_watts}")
        if not math.isfinite(utilisation):
            raise ValueError(f"utilisation {utilisation}")
        k = calibration_bin(utilisation)
        x = model_watts / self.scale
        y = measured_watts / self.scale
        n = min(self.n[k] + 1, self.memory)
        self.n[k] = n
        self.xbar[k] = self.xbar[k] + (x - self.xbar[k]) / n
        self.ybar[k] = self.ybar[k] + (y - self.ybar[k]) / n
        self.theta = self.fit()

    def fit(self) -> tuple:
        """(a, b) in units of S from the bins."""
        sw = swx = swy = swxx = swxy = 0.0
        for n, x, y in zip(self.n, self.xbar, self.ybar):
            if n == 0:
                continue
            w = n / self.memory
            sw += w
            swx += w * x
            swy += w * y
            swxx += w * x * x
            swxy += w * x * y
        a00 = swxx + CAL_RIDGE
        a01 = swx
        a11 = sw + CAL_RIDGE
        r0 = swxy + CAL_RIDGE
        r1 = swy
        det = a00 * a11 - a01 * a01
        a = (r0 * a11 - a01 * r1) / det
        b = (a00 * r1 - a01 * r0) / det
        if a < CAL_A[0] or a > CAL_A[1]:
            a = CAL_A[0] if a < CAL_A[0] else CAL_A[1]
            b = (swy - a * swx) / (sw + CAL_RIDGE)
        b = CAL_B[0] if b < CAL_B[0] else (CAL_B[1] if b > CAL_B[1] else b)
        return (a, b)

    def apply(self, model_watts):
        """The calibrated prediction max(0, a · P_model + b · S)."""
        a, b = self.theta
        return np.maximum(0.0, a * np.asarray(model_watts) + b * self.scale)


# --------------------------------------------------------------------------------------------
# ONNX


def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def metadata(model: PowerModel) -> dict[str, str]:
    e = model.inlet
    return {
        "wattwise.name": model.name,
        "wattwise.version": VERSION,
        "wattwise.training_data": model.training_data,
        "wattwise.inputs": ",".join(INPUTS),
        "wattwise.input_ranges": json.dumps(
            {
                "inlet_celsius": list(INLET_RANGE),
                "cpu0_celsius": list(CPU_RANGE),
                "cpu1_celsius": list(CPU_RANGE),
            }
        ),
        "wattwise.input_defaults": json.dumps(
            {
                "inlet_celsius": DEFAULT_INLET,
                "cpu0_celsius": DEFAULT_CPU,
                "cpu1_celsius": DEFAULT_CPU,
                "idle_over_peak": model.default_idle_over_peak,
            }
        ),
        "wattwise.output": "fraction_of_peak",
        "wattwise.default_peak_watts": f"{model.default_peak_watts:g}",
        # Informative only (the agent ignores other wattwise.* keys).
        "wattwise.description": model.description,
        "wattwise.formula": (
            "P/P_peak = (r + (1-r)*g(u; r)) * inlet_factor(inlet); g monotone piecewise-linear "
            "in u over 0,0.1,..,1 with weights interpolated linearly in r = idle_over_peak; "
            "cpu0_celsius and cpu1_celsius are accepted and have no effect"
        ),
        "wattwise.inlet_factor": e.formula(),
    }


def to_onnx(model: PowerModel) -> bytes:
    """The model as a tract-loadable ONNX graph (opset 13), serialised deterministically."""
    onnx, TensorProto, helper, numpy_helper = _onnx()
    f32 = np.float32
    inits = []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=f32), name))
        return name

    nodes = []

    def op(kind, inputs, output):
        nodes.append(helper.make_node(kind, inputs, [output], name=output))
        return output

    width = len(INPUTS)

    def column(feature, scale=1.0):
        e = np.zeros((width, 1))
        e[INPUTS.index(feature), 0] = scale
        return e

    # Columns, de-normalised: u and r are fed raw, the inlet as (T − 18) / 17.
    u = op("MatMul", ["input", const("select_u", column("cpu_utilisation"))], "u")
    r_raw = op("MatMul", ["input", const("select_r", column("idle_over_peak"))], "r_raw")
    lo, hi = INLET_RANGE
    t_scaled = op("MatMul", ["input", const("select_inlet", column("inlet_celsius", hi - lo))], "t_scaled")
    inlet = op("Add", [t_scaled, const("inlet_min", lo)], "inlet")

    # Shape weights: hat functions of r (clipped to the knots) times the knot weights.
    r_k = op("Max", [r_raw, const("r_knot_min", R_KNOTS[0])], "r_k_lo")
    r_k = op("Min", [r_k, const("r_knot_max", R_KNOTS[-1])], "r_k")
    left, inv_left, right, inv_right = _hat_constants()
    rise = op("Mul", [op("Sub", [r_k, const("hat_left", left[None, :])], "rise_d"),
                      const("hat_inv_left", inv_left[None, :])], "rise")
    fall = op("Mul", [op("Sub", [const("hat_right", right[None, :]), r_k], "fall_d"),
                      const("hat_inv_right", inv_right[None, :])], "fall")
    zero = const("zero", 0.0)
    one = const("one", 1.0)
    hat = op("Max", [op("Min", [rise, fall], "hat_min"), zero], "hat")
    w_r = op("MatMul", [hat, const("weights", model.weights)], "w_r")

    # Monotone utilisation basis.
    ramp = op("Mul", [op("Sub", [u, const("u_lo", U_KNOTS[None, :-1])], "ramp_d"),
                      const("u_inv_width", 1.0 / np.diff(U_KNOTS)[None, :])], "ramp_raw")
    ramp = op("Min", [op("Max", [ramp, zero], "ramp_pos"), one], "ramp")
    g = op("MatMul", [op("Mul", [w_r, ramp], "terms"),
                      const("sum_k", np.ones((len(U_KNOTS) - 1, 1)))], "g")

    # Shape: r + (1 − r) g, r clipped to [0, 1].
    r = op("Min", [op("Max", [r_raw, zero], "r_pos"), one], "r")
    shape = op("Add", [r, op("Mul", [op("Sub", [one, r], "one_minus_r"), g], "span")], "shape")

    # Inlet factor.
    e = model.inlet
    above = op("Relu", [op("Sub", [inlet, const("inlet_reference", e.reference)], "d_ref")], "above")
    above_knee = op("Relu", [op("Sub", [inlet, const("inlet_knee", e.knee)], "d_knee")], "above_knee")
    factor = op(
        "Add",
        [
            op("Add", [one, op("Mul", [above, const("inlet_slope", e.slope)], "lin")], "f1"),
            op("Mul", [above_knee, const("inlet_extra", e.extra)], "extra"),
        ],
        "inlet_factor",
    )
    op("Mul", [shape, factor], "fraction_of_peak")

    graph = helper.make_graph(
        nodes,
        f"wattwise_{model.name}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("fraction_of_peak", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name=PRODUCER,
        producer_version=VERSION,
        ir_version=8,
        model_version=1,
    )
    proto.doc_string = (
        "wattwise power model: node watts / peak watts from CPU utilisation, inlet temperature, "
        "CPU temperatures and idle/peak ratio. See the wattwise.* metadata."
    )
    helper.set_model_props(proto, metadata(model))
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(deterministic=True)


def onnx_inputs(u, inlet_c, r, cpu=DEFAULT_CPU) -> np.ndarray:
    """Rows as the agent feeds them (normalised with the metadata ranges)."""
    u = np.asarray(u, dtype=float).reshape(-1)
    cols = {
        "cpu_utilisation": u,
        "inlet_celsius": (np.broadcast_to(inlet_c, u.shape) - INLET_RANGE[0])
        / (INLET_RANGE[1] - INLET_RANGE[0]),
        "cpu0_celsius": np.broadcast_to((cpu - CPU_RANGE[0]) / (CPU_RANGE[1] - CPU_RANGE[0]), u.shape),
        "cpu1_celsius": np.broadcast_to((cpu - CPU_RANGE[0]) / (CPU_RANGE[1] - CPU_RANGE[0]), u.shape),
        "idle_over_peak": np.broadcast_to(r, u.shape),
    }
    return np.column_stack([cols[name] for name in INPUTS]).astype(np.float32)


def check_onnx(model: PowerModel, data: bytes) -> float:
    """Runs the file with onnx's reference evaluator on a grid and returns the largest difference
    from the numpy model (the two must agree to float32 precision)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    session = ReferenceEvaluator(onnx.load_from_string(data))
    u = np.tile(np.linspace(0.0, 1.0, 21), 3 * 4)
    inlet = np.repeat([18.0, 23.0, 30.0, 35.0], 21 * 3)
    r = np.tile(np.repeat([0.05, 0.27, 0.9], 21), 4)
    x = onnx_inputs(u, inlet, r)
    got = session.run(None, {"input": x})[0].reshape(-1)
    want = model.fraction(u, r, inlet)
    return float(np.max(np.abs(got - want)))
