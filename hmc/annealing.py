"""Annealed importance sampling: heat-bath sweeps from a flow (or Haar measure) to the target, with
an exact weight.

Each sample starts from ``U_0 ~ q``, the Haar measure at ``beta_0 = 0`` or a trained flow model of
the same theory at a coupling ``beta_0``, and is carried along a ladder ``beta_0 < beta_1 < ... <
beta_n = beta`` (linear in ``beta``) by Markov steps ``U_k ~ K_k(U_{k-1}, .)`` that leave
``exp(-S_{beta_k})`` invariant (:func:`gaugeflow.hmc.heatbath.heat_bath_sweep`).  Its weight

    log w = -S_{beta_0}(U_0) - log q(U_0) - sum_{k=1}^{n} [S_{beta_k}(U_{k-1}) - S_{beta_{k-1}}(U_{k-1})]

makes the estimates exact at any ``n``: ``E[w f(U_n)] = Z_beta <f>_beta`` and ``E[w] = Z_beta``, with
``Z`` in the field type's reference measure, the one of
:meth:`gaugeflow.lattice.theory.Theory.exact_log_partition_function` (Jarzynski, Phys. Rev.
Lett. 78 (1997) 2690; Neal, Stat. Comput. 11 (2001) 125).  In lattice field theory this is
non-equilibrium Monte Carlo (Caselle, Cellini, Nada, Panero, arXiv:2201.08862); with flow layers
between the sweeps it is a stochastic normalizing flow (Wu, Köhler, Noé, arXiv:2002.06707;
4D SU(3): Bulgarelli, Cellini, Nada, arXiv:2412.00200).

Unlike a flow's map, every sweep draws fresh random numbers, and a longer ladder brings the
weights closer to one (the variance of ``log w`` falls like ``1/n``), at a cost linear in ``n``.
``log w`` plays the part of ``log p - log q`` of a flow: the ESS and the independence-Metropolis
chain of :mod:`gaugeflow.flows.diagnostics` take it as they are (Metropolis on the whole path
``U_0 ... U_n``, whose marginal in ``U_n`` is the target).
"""

from __future__ import annotations

import contextlib
import json
import math

import torch

from gaugeflow.flows.diagnostics import effective_fraction
from gaugeflow.lattice.errors import InputError

from .heatbath import check_pure_gauge, heat_bath_sweep
from .sampler import TrajectoryResult, global_rng_seeded_from, independence_step


def beta_ladder(beta_start: float, beta: float, n_steps: int) -> list[float]:
    """``n_steps + 1`` couplings from ``beta_start`` to ``beta``, equally spaced."""
    if int(n_steps) < 1:
        raise InputError(f"an annealing ladder needs at least one step, got {n_steps}")
    return [beta_start + (beta - beta_start) * k / n_steps for k in range(n_steps + 1)]


def _check_start(theory, start) -> None:
    found = start.theory
    if (found.name, found.lattice_shape) != (theory.name, theory.lattice_shape):
        raise InputError(f"the starting flow is a model of {found.name} on {found.lattice_shape}, "
                         f"not of {theory.name} on {theory.lattice_shape}")


def _check_ladder(theory, sweeps: int, start) -> None:
    """Refuse, by name, what annealing cannot do: a theory without a heat bath, fewer than one
    sweep a rung, a start of another theory or lattice."""
    check_pure_gauge(theory)
    if int(sweeps) < 1:
        raise InputError(f"sweeps per rung must be >= 1, got {sweeps}")
    if start is not None:
        _check_start(theory, start)


FLOW_BATCH = 256  # the flow start's samples are drawn this many at a time


def _start(theory, start, n_samples: int, generator, haar):
    """``(U_0, log q(U_0))`` in float64 (complex128 links); ``haar`` the Haar prior where
    ``start`` is ``None``."""
    if start is None:
        field = theory.hot_start(n_samples, generator=generator)
        return field, haar.log_prob(field).to(torch.float64)
    fields, log_qs = [], []
    with torch.no_grad():
        for done in range(0, n_samples, FLOW_BATCH):  # particle systems ask for thousands at once
            field, log_q = start.sample(min(FLOW_BATCH, n_samples - done))
            fields.append(field.to(theory.storage_dtype(torch.float64)))
            log_qs.append(log_q.to(torch.float64))
    return torch.cat(fields), torch.cat(log_qs)


def annealed_samples(theory, n_samples: int, n_steps: int, *, start=None, sweeps: int = 1, generator=None,
                     batch_size: int = 256, progress=None):
    """``(U_n, log w)`` for ``n_samples`` independent annealed samples of ``theory`` (module
    docstring): ``n_steps`` rungs from the start's ``beta`` (``start=None``: Haar measure, ``beta =
    0``; else a flow model of the same theory and lattice, drawn with the global torch RNG, in
    float64 after ``model.double()``) to the theory's, ``sweeps`` heat-bath sweeps on each.
    Float64 (complex128) throughout; ``batch_size`` samples at a time; ``progress(done)`` is
    called after each batch."""
    _check_ladder(theory, sweeps, start)
    fields, log_weights = [], []
    done = 0
    while done < n_samples:
        size = min(batch_size, n_samples - done)
        field, log_w, _ = _anneal(theory, size, n_steps, start, int(sweeps), generator, resample_below=None)
        fields.append(field)
        log_weights.append(log_w)
        done += size
        if progress is not None:
            progress(done)
    return torch.cat(fields), torch.cat(log_weights)


def _anneal(theory, n_paths: int, n_steps: int, start, sweeps: int, generator, resample_below: float | None,
            systems: int = 1):
    """``(U_n, log w, log Z_resampled)`` of ``n_paths`` paths up the ladder (``start`` checked by
    the caller; ``start=None``: Haar measure), in ``systems`` consecutive groups of equal size.  A
    group is resampled within itself whenever the effective fraction of its weights falls below
    ``resample_below`` (never for ``None``): ``log w`` is then each path's weight since its group's
    last resampling and ``log Z_resampled [systems]`` the sum of the group's ``log mean w`` at its
    resamplings (0 without)."""
    if start is None:
        from gaugeflow.flows.priors import plain_prior, prior_for

        haar, beta_start = prior_for(theory, plain_prior(theory)), 0.0
    else:
        haar, beta_start = None, start.theory.couplings["beta"]
    ladder = beta_ladder(beta_start, theory.couplings["beta"], n_steps)
    rungs = [theory.with_couplings(beta=beta) for beta in ladder[1:]]
    unit_action = theory.with_couplings(beta=1.0).action  # the Wilson action is beta times that at beta = 1
    field, log_q = _start(theory, start, n_paths, generator, haar)
    log_w = -ladder[0] * unit_action(field) - log_q
    log_z = torch.zeros(systems, dtype=torch.float64, device=log_w.device)
    own = torch.arange(n_paths, device=log_w.device).view(systems, -1)
    for previous, beta, rung in zip(ladder, ladder[1:], rungs):
        log_w = log_w - (beta - previous) * unit_action(field)
        if resample_below is not None:
            by_system = log_w.view(systems, -1)
            low = effective_fraction(by_system) < resample_below
            if bool(low.any()):
                log_z = log_z + torch.where(low, log_mean_weight(by_system), 0.0)
                drawn = systematic_resampling(by_system, generator) + own[:, :1]
                field = field[torch.where(low[:, None], drawn, own).flatten()]
                log_w = torch.where(low[:, None], 0.0, by_system).flatten()
        for _ in range(sweeps):
            field = heat_bath_sweep(rung, field, generator)
    return field, log_w, log_z


def log_mean_weight(log_w: torch.Tensor) -> torch.Tensor:
    """``log mean w`` over the last axis."""
    return torch.logsumexp(log_w, -1) - math.log(log_w.shape[-1])


def systematic_resampling(log_w: torch.Tensor, generator=None) -> torch.Tensor:
    """Indices ``[..., n]`` (into the last axis) of ``n`` paths drawn with probabilities ``w / sum
    w`` by systematic resampling: one uniform ``u`` per row, the points ``(u + k) / n``, each path
    taken as often as they fall in its share of ``[0, 1)`` (Kitagawa, J. Comput. Graph. Stat. 5
    (1996) 1; the lowest variance of the usual schemes, Douc, Cappé, Moulines,
    arXiv:cs/0507025)."""
    n = log_w.shape[-1]
    shares = torch.cumsum(torch.softmax(log_w.to(torch.float64), -1), -1)
    u = torch.rand((*log_w.shape[:-1], 1), generator=generator, dtype=torch.float64, device=log_w.device)
    points = (u + torch.arange(n, dtype=torch.float64, device=log_w.device)) / n
    return torch.searchsorted(shares.contiguous(), points.contiguous()).clamp(max=n - 1)


def annealed_particles(theory, n_systems: int, n_particles: int, n_steps: int, *, start=None, sweeps: int = 1,
                       generator=None, resample_below: float = 0.5):
    """Sequential Monte Carlo: ``n_systems`` independent systems of ``n_particles`` annealed paths
    (:func:`annealed_samples`), each system resampled within itself (:func:`systematic_resampling`)
    before a rung's sweeps whenever the effective fraction of its weights has fallen below
    ``resample_below`` (Del Moral, Doucet, Jasra, J. R. Stat. Soc. B 68 (2006) 411).  Paths that
    lag behind the target -- left in a metastable phase, or in the wrong flux sector -- are
    dropped and the others copied, where single paths would carry their weights to the end.

    Returns ``(U_n [S, K, ...], log w [S, K], log Z [S])``: the particles, their weights since
    their system's last resampling, and ``log Z = sum_stages log mean w``, the log of an unbiased
    estimate ``Z_hat`` of ``Z_beta`` (the estimate, not its log, is unbiased) in the reference
    measure of :func:`annealed_samples`; resampling that is triggered by the weights themselves
    keeps it unbiased (Whiteley, Lee, Heine, arXiv:1309.2918), as does systematic resampling,
    which copies each path ``K w_j / sum w`` times on average.  Within a system ``<f>_beta`` is
    estimated by ``sum w f(U_n) / sum w``.  Float64; all systems run as one batch."""
    _check_ladder(theory, sweeps, start)
    if int(n_particles) < 1 or int(n_systems) < 1:
        raise InputError(f"a particle system needs at least one particle, got {n_systems} systems of {n_particles}")
    if not 0 <= float(resample_below) <= 1:
        raise InputError(f"resample_below is a fraction of the particles, in [0, 1]; got {resample_below}")
    systems, particles = int(n_systems), int(n_particles)
    field, log_w, log_z = _anneal(theory, systems * particles, n_steps, start, int(sweeps), generator,
                                  float(resample_below), systems)
    log_w = log_w.view(systems, particles)
    return field.unflatten(0, (systems, particles)), log_w, log_z + log_mean_weight(log_w)


class AnnealedMetropolisSampler:
    """Independence Metropolis over annealed proposals: every update draws, for every chain, a new
    annealed sample (:func:`annealed_samples`, ``n_steps`` rungs) and accepts it with probability
    ``min(1, w' / w)`` in float64.  This is Metropolis-Hastings on the whole path ``U_0 ... U_n``,
    whose marginal in ``U_n`` is the target, so the chain is exact for any ``n_steps``;
    ``n_steps`` sets the acceptance (about ``exp(-var(log w) / 2)``-like) against the cost of an
    update (``n_steps`` heat-bath sweeps).  Proposals are independent of the chain's state, so
    modes a local algorithm cannot cross (topological sectors) cost nothing extra.

    ``start=None`` starts every path from Haar measure (``beta_0 = 0``); a flow model of the same
    theory and lattice at another ``beta`` starts it from the flow (``source``: its checkpoint,
    stored with the ensemble with the digest of its weights and checked on resume): a flow trained
    where it is good (small ``beta``) and the heat-bath sweeps carry it the rest of the way
    (Caselle, Cellini, Nada, Panero, arXiv:2201.08862).  The flow's samples are drawn from a
    generator seeded from the chain's own, so a resumed run continues exactly.

    ``particles=K > 1``: every proposal comes from a particle system of ``K`` resampled paths
    (:func:`annealed_particles`), one particle picked with probability ``w_j / sum w``, and its
    weight is the system's estimate ``Z_hat`` in place of ``w``: particle independent
    Metropolis-Hastings (Andrieu, Doucet, Holenstein, J. R. Stat. Soc. B 72 (2010) 269, sec. 4.2),
    exact for any ``K`` and ``n_steps``.  An update costs ``K n_steps`` sweeps a chain; resampling
    keeps the paths that reached the target's phase, so where single paths lag behind a transition
    (4D U(1) across beta ~ 1) the spread of ``log Z_hat`` falls far below that of ``log w``.

    The weights of the current states are path quantities, not functions of the field: they are
    kept in the resume state (:meth:`resume_attributes`, as text with every digit).
    """

    name = "annealed"

    def __init__(self, theory, n_steps: int = 100, sweeps: int = 1, start=None, source: str = "",
                 particles: int = 1):
        _check_ladder(theory, sweeps, start)
        beta_ladder(0.0, theory.couplings["beta"], n_steps)  # n_steps >= 1, or a clear error
        if int(particles) < 1:
            raise InputError(f"an annealed proposal needs at least one particle, got {particles}")
        self.particles = int(particles)
        if start is not None:
            start = start.double()
            start.eval()
        self.theory, self.n_steps, self.sweeps = theory, int(n_steps), int(sweeps)
        self.start, self.source = start, str(source)
        self.log_weight = None

    def run_parameters(self) -> dict:
        parameters = {"anneal_steps": self.n_steps, "anneal_sweeps": self.sweeps, "anneal_particles": self.particles,
                      "anneal_start": "haar" if self.start is None else "flow",
                      "anneal_start_beta": 0.0 if self.start is None else float(self.start.theory.couplings["beta"])}
        if self.start is not None:
            from .flow_metropolis import flow_run_parameters

            parameters.update(flow_run_parameters(self.start, self.source))
        return parameters

    def _proposals(self, n: int, generator, device):
        # only a flow draws from the global RNG; a Haar start leaves the chain's stream as it was
        seeded = contextlib.nullcontext() if self.start is None else global_rng_seeded_from(generator, device)
        with seeded:
            if self.particles == 1:
                return annealed_samples(self.theory, n, self.n_steps, start=self.start, sweeps=self.sweeps,
                                        generator=generator, batch_size=n)
            # one particle system per chain, and one particle of it, drawn with probability w_j / sum w
            field, log_w, log_z = annealed_particles(self.theory, n, self.particles, self.n_steps, start=self.start,
                                                     sweeps=self.sweeps, generator=generator)
            pick = torch.multinomial(torch.softmax(log_w, -1), 1, generator=generator).squeeze(-1)
            return field[torch.arange(n, device=pick.device), pick], log_z

    def update(self, field, generator) -> TrajectoryResult:
        n = field.shape[0]
        proposal, new_log_weight = self._proposals(n, generator, field.device)
        proposal = proposal.to(device=field.device, dtype=field.dtype)
        new_log_weight = new_log_weight.to(field.device)
        if self.log_weight is None:  # new chains take their first proposal
            held = new_log_weight
            result = independence_step(field, proposal, torch.full_like(new_log_weight, torch.inf), new_log_weight,
                                       generator)
            result.delta_h = torch.zeros_like(new_log_weight)
        else:
            if self.log_weight.shape != new_log_weight.shape:
                raise InputError(f"the resume state holds the weights of {self.log_weight.numel()} chains, "
                                 f"not of {n}")
            held = self.log_weight.to(field.device)
            result = independence_step(field, proposal, new_log_weight - held, new_log_weight, generator)
        self.log_weight = torch.where(result.accepted, new_log_weight, held)
        return result

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        """Start every chain from an annealed proposal, then ``n_therm`` updates."""
        self.log_weight = None
        field = self.update(field, generator).field
        for _ in range(n_therm):
            if received is not None and received.get("signal"):
                break
            field = self.update(field, generator).field
        return field

    def resume_attributes(self) -> dict:
        if self.log_weight is None:
            return {}
        return {"annealed_log_weights": json.dumps([float(x) for x in self.log_weight.cpu()])}

    def restore(self, state: dict) -> None:
        stored = state.get("annealed_log_weights")
        self.log_weight = None if stored is None else torch.tensor(json.loads(stored), dtype=torch.float64)

    def postfix(self) -> dict:
        return {"steps": self.n_steps, "particles": self.particles}
