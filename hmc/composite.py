"""Composite chains: flow independence Metropolis followed by HMC, with a fallback policy.

Each step of a composite chain (Hackett et al., arXiv:2107.00734) is a flow
independence-Metropolis proposal (:class:`~gaugeflow.hmc.flow_metropolis.FlowMetropolisSampler`)
followed by ``K`` HMC trajectories.  Both kernels leave ``p`` invariant, so the chain is exact
for any fixed ``K`` and any model, and ergodic whenever ``K >= 1``: HMC moves the chain where
the flow is poor, the flow jumps between topological sectors where HMC freezes.

**Fallback policy** (``hmc_per_step=None``, ``gaugeflow sample --hmc-per-step auto``): during
thermalisation the chain measures the flow's acceptance ``a``, the cost of a flow step
``t_f`` and of a trajectory ``t_h``, and HMC's integrated autocorrelation time ``tau`` (Gamma
method over the chains, of the topological charge where there is one, else of the action
density), and chooses what minimises the estimated cost per independent sample,

    cost(K) = (t_f + K t_h) / min(1, a + K / (2 tau)),      cost(pure HMC) = 2 tau t_h,

over ``K`` in {1, 2, 4, 8, 16}, plus pure flow (``K = 0``) when ``a >= 0.5`` and pure HMC when
``a < 0.02``: per step, an accepted proposal is a new independent sample, and ``K``
trajectories decorrelate about ``K / (2 tau)`` of one.  HMC's ``tau`` is read with care
(:func:`hmc_tau_for_policy`): under topological freezing a short window sees a constant or
nearly constant integer charge, which the Gamma method reads as "decorrelated".  The series
is rounded to 1e-8 first (round-off in a charge computed from angles is not motion).  Then
``tau`` is at least ``1 / (2 r)`` for a charge that changes in a fraction ``r`` of the
trajectories (``N`` if it never changes), and a window of ``N < 10 tau`` trajectories per chain,
too short to resolve it, counts as ``tau >= N``.  The choice is made once, before
production, so the stored chain is a fixed Markov process; it is stored in the ensemble's
attributes (``hmc_per_step``, ``use_flow``) with its reason in words (``fallback_reason``, also
logged), e.g. "flow proposals accept 0.875; HMC alone costs 12.0 ms per independent sample
against 15.2 ms for a flow proposal and 1 HMC trajectory per step, so this run uses HMC alone
(...)", and a resumed run keeps it.  The choice rests on measured times, so two separate runs with the
same seed may choose differently: fix ``K`` (``--hmc-per-step``) for runs that must be
reproducible bit for bit.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from gaugeflow.lattice.errors import InputError

from .autocorrelation import gamma_method
from .pseudofermion_metropolis import flow_metropolis_sampler
from .hmc import HMCParameters, HMCSampler
from .sampler import TrajectoryResult

log = logging.getLogger("gaugeflow")
CANDIDATE_K = (1, 2, 4, 8, 16)
PURE_FLOW_ACCEPTANCE, USELESS_FLOW_ACCEPTANCE = 0.5, 0.02


def hmc_tau_for_policy(series) -> tuple[float, str]:
    """HMC's ``tau`` from ``series`` ``[N trajectories, chains]`` for :func:`choose_policy`, and how
    it was found (module docstring): the Gamma method's, at least ``1 / (2 r)`` for a series that
    moves in a fraction ``r`` of the steps, and at least ``N`` where ``N < 10 tau``."""
    # an integer charge computed from angles carries rounding noise (|Q - round(Q)| ~ 1e-15, new
    # after every trajectory), which would read as motion and as tau ~ 0.5 (it did, at beta 6)
    series = np.round(np.asarray(series, dtype=np.float64), 8)
    window = series.shape[0]
    moves = float((np.diff(series, axis=0) != 0).mean()) if window > 1 else 0.0
    if moves == 0:
        return float(window), f"unresolved: constant over {window} trajectories"
    tau = max(gamma_method(list(series.T)).tau_int, 1 / (2 * moves))
    if window < 10 * tau:
        return max(tau, float(window)), f"unresolved: {tau:.1f} from {window} trajectories, moving in {moves:.0%}"
    return tau, "resolved"


def describe_steps(use_flow: bool, hmc_per_step: int) -> str:
    """What each step of a composite chain does, in words: ``"HMC alone"``, ``"flow proposals
    alone"`` or ``"a flow proposal and K HMC trajectories per step"``."""
    if not use_flow:
        return "HMC alone"
    if hmc_per_step == 0:
        return "flow proposals alone"
    return f"a flow proposal and {hmc_per_step} HMC {'trajectory' if hmc_per_step == 1 else 'trajectories'} per step"


def _ms(seconds: float) -> str:
    milliseconds = 1e3 * seconds
    return f"{milliseconds:.0f} ms" if milliseconds >= 100 else f"{milliseconds:.3g} ms"


def choose_policy(acceptance: float, tau: float, flow_seconds: float, hmc_seconds: float,
                  tau_found: str = "") -> tuple[bool, int, str]:
    """``(use_flow, K, reason)`` minimising the estimated cost per independent sample; ``reason``
    says in words what was measured, what each choice costs and what this run uses, e.g. "flow
    proposals accept 0.875; HMC alone costs 12 ms per independent sample against 15.2 ms for a
    flow proposal and 1 HMC trajectory per step, so this run uses HMC alone (...)".
    ``tau_found`` says how ``tau`` was found (:func:`hmc_tau_for_policy`)."""
    tau = max(float(tau), 0.5)
    hmc_cost = 2 * tau * hmc_seconds
    flow_options = {k: (flow_seconds + k * hmc_seconds) / min(1.0, acceptance + k / (2 * tau)) for k in CANDIDATE_K}
    if acceptance >= PURE_FLOW_ACCEPTANCE:
        flow_options[0] = flow_seconds / min(1.0, acceptance)
    best_k = min(flow_options, key=flow_options.get)
    best_flow = "the flow alone" if best_k == 0 else describe_steps(True, best_k)
    use_flow = acceptance >= USELESS_FLOW_ACCEPTANCE and flow_options[best_k] < hmc_cost
    tau_text = (f"HMC tau_int {tau:.1f} trajectories" if tau_found in ("", "resolved")
                else f"HMC tau_int taken as {tau:.1f} trajectories ({tau_found})")
    measured = f"measured: {_ms(flow_seconds)} per flow proposal, {_ms(hmc_seconds)} per HMC trajectory, {tau_text}"
    if acceptance < USELESS_FLOW_ACCEPTANCE:
        return False, 1, (f"flow proposals accept {acceptance:.3f}, too rarely to help (below "
                          f"{USELESS_FLOW_ACCEPTANCE}), so this run uses HMC alone, at {_ms(hmc_cost)} per "
                          f"independent sample ({measured})")
    if not use_flow:
        return False, 1, (f"flow proposals accept {acceptance:.3f}; HMC alone costs {_ms(hmc_cost)} per independent "
                          f"sample against {_ms(flow_options[best_k])} for {best_flow}, so this run uses HMC alone "
                          f"({measured})")
    return True, best_k, (f"flow proposals accept {acceptance:.3f}; {best_flow} costs {_ms(flow_options[best_k])} per "
                          f"independent sample against {_ms(hmc_cost)} for HMC alone, so this run uses "
                          f"{describe_steps(True, best_k)} ({measured})")


def describe_run(postfix: dict, acceptance: float, chosen: bool = True) -> str:
    """What a finished composite run did, in words, from its sampler's :meth:`~CompositeSampler.postfix`
    and the run's acceptance (the flow's where the flow ran, else HMC's), for ``gaugeflow sample``'s
    summary; ``chosen``: by the fallback policy (else fixed by the user)."""
    use_flow = postfix.get("K") != "hmc"
    k = int(postfix["K"]) if use_flow else 1
    how = "as chosen during thermalisation (the ensemble's fallback_reason says why)" if chosen else "as asked"
    steps = f", {postfix['steps']} steps per trajectory" if "steps" in postfix else ""
    if not use_flow:
        numbers = f"HMC acceptance {acceptance:.3f}{steps}"
    elif k == 0:
        numbers = f"flow acceptance {acceptance:.3f}"
    else:
        numbers = f"flow acceptance {acceptance:.3f}, HMC acceptance {postfix.get('hmc_acc', '-')}{steps}"
    return f"the composite sampler ran {describe_steps(use_flow, k)}, {how}: {numbers}"


def _slowest_mode(theory, field):
    """What HMC's autocorrelation time is read from: the topological charge where the theory
    has one (it freezes first), else the action density -- taken from the theory itself, so
    any theory works, whatever observables it stores."""
    if getattr(theory, "has_topological_charge", False):
        return theory.topological_charge(field)
    return theory.action(field) / theory.volume


class CompositeSampler:
    """Flow independence Metropolis, then ``hmc_per_step`` HMC trajectories (``None``: chosen
    by the fallback policy during thermalisation)."""

    name = "composite"

    def __init__(self, model, hmc_per_step: int | None = None, params: HMCParameters | None = None, tune: bool = True,
                 target_acceptance: float = 0.8, source: str = ""):
        if hmc_per_step is not None and int(hmc_per_step) < 0:
            raise InputError(f"hmc_per_step must be non-negative, got {hmc_per_step}")
        self.flow = flow_metropolis_sampler(model, source)
        self.hmc = HMCSampler(self.flow.model.theory, params, tune, target_acceptance)
        self.auto = hmc_per_step is None
        self.decided = not self.auto  # set once: by the policy, or by restore() from an earlier run
        self.use_flow, self.hmc_per_step = True, 1 if hmc_per_step is None else int(hmc_per_step)
        self.reason = f"fixed by the user: this run uses {describe_steps(True, self.hmc_per_step)}"
        self.hmc_acceptance = []

    def run_parameters(self) -> dict:
        return {**self.flow.run_parameters(), **self.hmc.run_parameters(), "fallback": "auto" if self.auto else "fixed",
                "hmc_per_step": self.hmc_per_step, "use_flow": self.use_flow, "fallback_reason": self.reason}

    def update(self, field, generator) -> TrajectoryResult:
        result = self.flow.update(field, generator) if self.use_flow else None
        field = field if result is None else result.field
        for _ in range(self.hmc_per_step if self.use_flow else 1):
            trajectory = self.hmc.update(field, generator)
            field = trajectory.field
            self.hmc_acceptance.append(trajectory.accepted.double().mean().item())
        if self.hmc_per_step or not self.use_flow:
            self.flow.log_weight = None  # the state moved: its weight is recomputed at the next flow step
        if result is None:
            return trajectory
        return TrajectoryResult(field, result.accepted, result.delta_h)

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        field = self.hmc.thermalise(field, n_therm, generator, progress, received)
        if not self.auto or (received is not None and received["signal"]):
            return field
        measure = max(10, n_therm // 4)
        series, began = [], time.perf_counter()
        for _ in range(measure):
            field = self.hmc.update(field, generator).field
            series.append(_slowest_mode(self.hmc.theory, field).cpu().numpy())
        hmc_seconds = (time.perf_counter() - began) / measure
        tau, how = hmc_tau_for_policy(series)
        accepted, began = [], time.perf_counter()
        for _ in range(measure):
            step = self.flow.update(field, generator)
            field = step.field
            accepted.append(step.accepted.double().mean().item())
        flow_seconds = (time.perf_counter() - began) / measure
        if not self.decided:  # the measurements above ran anyway: the random numbers they drew are the same
            self.use_flow, self.hmc_per_step, self.reason = choose_policy(float(np.mean(accepted)), tau, flow_seconds,
                                                                          hmc_seconds, tau_found=how)
            self.decided = True
            log.warning("composite sampler: %s", self.reason)
        return field

    def resume_attributes(self) -> dict:
        return {**self.hmc.resume_attributes(), "hmc_per_step": self.hmc_per_step, "use_flow": self.use_flow,
                "fallback_reason": self.reason}

    def restore(self, state: dict) -> None:
        self.hmc.restore(state)
        self.flow.restore(state)
        if "hmc_per_step" in state:
            self.hmc_per_step, self.use_flow = int(state["hmc_per_step"]), bool(state["use_flow"])
            self.reason, self.decided = str(state["fallback_reason"]), True

    def postfix(self) -> dict:
        hmc = f"{np.mean(self.hmc_acceptance[-50:]):.2f}" if self.hmc_acceptance else "-"
        return {"K": self.hmc_per_step if self.use_flow else "hmc", "hmc_acc": hmc, **self.hmc.postfix()}
