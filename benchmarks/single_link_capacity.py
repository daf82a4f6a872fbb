"""Can one staple layer draw a link from its exact conditional?  The capacity of the per-link map
families for a heat-bath step, measured apart from everything else a 4D flow learns.

On configurations from HMC (4^4, ``--beta``), the links of one staple mask (``U_mu(x)``, ``mu = D -
1``, odd parity; no two share a plaquette) are redrawn from Haar measure and mapped by a stack of
layers acting on that mask only, while every other link stays fixed.  The target of the mapped
links is the product of their heat-bath conditionals, ``prod_l exp((beta / N) Re tr U_l A_l)``
with ``A_l`` the staple sum (:meth:`gaugeflow.lattice.sun.SUN.staples`).  After training by
reverse KL, the script reports the variance of ``log w = (beta / N) Re tr U A + log det`` over
redraws at fixed staples, per link: zero for a family that holds the conditional.  The weights
of links that share no plaquette multiply, so a mask's variance is the sum over its links; the
last column is the lattice's number of links times the variance per link.

What this measures is a heat-bath step made a flow layer: the task of a design in which each
layer draws its links from their conditionals given everything else (a flow with fresh
randomness, a stochastic normalizing flow).  It does not bound the variance of a trained
coupling flow: there the earlier layers see the later links' prior values through their
conditioners, so the last mask's distribution given the rest is not its layer's image of Haar
measure (benchmarks/README.md shows a trained model doing far better than this bound would allow).

The stacks are comma-separated layers: ``sum`` and ``each`` are
:class:`gaugeflow.flows.staple_coupling.SUNStapleCoupling` with those centres; ``stout`` is a
prototype of a stout-smearing step (Morningstar and Peardon, hep-lat/0311018; as a flow: Nagai
and Tomiya, arXiv:2103.11965; Abbott et al., arXiv:2305.02402), defined here for this
measurement only (forward direction, no inverse; trained with reparameterisation gradients,
the other stacks with path gradients unless ``--estimator reparam``):

    U -> exp(eps Z) U,     Z = TA(U A_w),     A_w = sum_k w_k C_k,

``TA`` the traceless anti-Hermitian part and ``eps`` a learned function of the staples'
invariants, bounded by ``0.9 / s_max(A_w)`` (the largest singular value) so that the map is a
contraction-perturbed identity and invertible.  Unlike a class-function map of ``U W`` or ``U
C_k``, which scales every direction of the algebra alike around its centre, the step moves
``U`` along the gradient of ``Re tr U A``, whose curvature differs between directions when
``A`` is not a multiple of a unitary matrix (SU(N >= 3)); a composition of class-function maps
gets such anisotropy only from how far the link sits from the maps' centres.  Its log-det is
that of the right-trivialised 8x8 (``N^2 - 1``) Jacobian
``J(d) = eps dexp_{eps Z}(TA(d U A)) + Ad_{exp(eps Z)}(d)``, checked against autograd when the
script starts.

    python benchmarks/single_link_capacity.py su3 2.0 --stacks sum each each,each stout,each each,stout,each
    python benchmarks/single_link_capacity.py su2 1.5 --stacks sum --steps 2000   # an exact family: variance -> 0
    python benchmarks/single_link_capacity.py su3 2.0 --quick                      # a smoke run

Results: benchmarks/README.md ("A heat-bath step as a flow layer").
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gaugeflow.flows.conditioners import SiteMLP
from gaugeflow.flows.estimators import frozen_parameters
from gaugeflow.flows.masks import staple_link_mask
from gaugeflow.flows.staple_coupling import SUNStapleCoupling, project_staple_sum, sun_staple_features
from gaugeflow.flows.sun_coupling import SpectralTransform
from gaugeflow.hmc.hmc import HMCParameters, thermalise
from gaugeflow.lattice.gauge import average_plaquette
from gaugeflow.lattice.groups import haar_random_sun, real_trace, traceless_antihermitian
from gaugeflow.lattice.theories import make_theory


def algebra_basis(n: int) -> torch.Tensor:
    """An orthonormal basis ``T_a`` of su(N), ``tr(T_a^dagger T_b) = delta_ab``: ``[N^2 - 1, N, N]``."""
    basis = []
    for i in range(n):
        for j in range(i + 1, n):
            for upper in (1.0, -1j):  # the Hermitian generators with tr h^2 = 2, then T = i h / sqrt(2)
                h = torch.zeros(n, n, dtype=torch.complex128)
                h[i, j], h[j, i] = upper, complex(upper).conjugate()
                basis.append(1j * h / math.sqrt(2))
    for k in range(1, n):
        t = torch.zeros(n, n, dtype=torch.complex128)
        t[:k, :k] = torch.eye(k)
        t[k, k] = -k
        basis.append(1j * t / math.sqrt(k * (k + 1)))
    return torch.stack(basis)


def stout_log_det(eps: torch.Tensor, z: torch.Tensor, p: torch.Tensor, terms: int = 24) -> torch.Tensor:
    """``log |det|`` of ``U -> exp(eps Z(U)) U`` with ``Z = TA(U A)``, ``P = U A``, per link, with respect
    to Haar measure; ``eps [...]``, ``z, p [..., N, N]``.  ``dexp`` by its series in ``ad_{eps Z}``
    (``|eps Z| <= 0.9``, so ``terms`` reach float64 rounding)."""
    n = p.shape[-1]
    basis = algebra_basis(n).to(p.device)
    x = eps[..., None, None] * z
    d = basis.view(-1, *([1] * (p.dim() - 2)), n, n)
    y = traceless_antihermitian(d @ p)  # dZ along each basis direction
    series, term = y, y
    for k in range(1, terms):
        term = (x @ term - term @ x) / (k + 1)
        series = series + term
    e = torch.linalg.matrix_exp(x)
    jacobian = eps[..., None, None] * series + e @ d @ e.mH  # [N^2 - 1 (a), ..., N, N]
    coefficients = torch.einsum("bij,a...ij->...ab", basis.conj(), jacobian).real
    return torch.linalg.slogdet(coefficients)[1]


class StoutStep(torch.nn.Module):
    """``U -> exp(eps TA(U A_w)) U`` on the active links of the staple mask ``(mu, parity)``
    (module docstring; a prototype for this measurement: forward only)."""

    def __init__(self, lattice_shape, n_colors: int, mu: int, parity: int, hidden):
        super().__init__()
        # the staples, weights, gather and scatter of the staple coupling of the same mask
        self.staple_layer = SUNStapleCoupling(lattice_shape, n_colors, mu, parity, SpectralTransform(n_colors), hidden)
        n_features = self.staple_layer.conditioner.layers[0].in_features
        self.step = SiteMLP(n_features, 1, tuple(hidden), output_bias=torch.zeros(1))

    def forward(self, links):
        layer = self.staple_layer
        staples = layer.staples(links).to(torch.complex128)
        staple_sum = torch.einsum("k,knbij->nbij", layer.staple_weights.to(staples.dtype), staples)
        projected, singular_values, phase = project_staple_sum(staple_sum)
        features = sun_staple_features(staples, projected, singular_values, phase)
        weight = next(self.step.parameters())
        raw = self.step(features.to(weight.dtype)).to(torch.float64)[..., 0]
        eps = torch.tanh(raw) * 0.9 / singular_values.max(-1).values
        u = layer.gather(links[:, layer.mu]).to(torch.complex128)
        p = u @ staple_sum
        z = traceless_antihermitian(p)
        moved = torch.linalg.matrix_exp(eps[..., None, None] * z) @ u
        return layer.scatter(links, moved.to(links.dtype)), stout_log_det(eps, z, p).sum(0)


def check_stout_log_det(n_colors: int) -> float:
    """Largest difference between :func:`stout_log_det` and the log-det of the autograd Jacobian
    in the coordinates ``U -> exp(sum_a alpha_a T_a) U``, over a few random links and staple sums."""
    generator = torch.Generator().manual_seed(5)
    basis = algebra_basis(n_colors)
    worst = 0.0
    for eps in (0.05, 0.15, 0.3):
        u = haar_random_sun((), n_colors, generator=generator)
        a = haar_random_sun((4,), n_colors, generator=generator).sum(0)
        eps = torch.tensor(eps * 0.9 * 4 / torch.linalg.matrix_norm(a, 2).item(), dtype=torch.float64)

        def mapped(alpha):
            moved = torch.linalg.matrix_exp(torch.einsum("a,aij->ij", alpha.to(torch.complex128), basis)) @ u
            return torch.linalg.matrix_exp(eps * traceless_antihermitian(moved @ a)) @ moved

        origin = mapped(torch.zeros(len(basis), dtype=torch.float64))
        jacobian = torch.autograd.functional.jacobian(
            lambda alpha: torch.einsum("bij,ij->b", basis.conj(), mapped(alpha) @ origin.mH).real,
            torch.zeros(len(basis), dtype=torch.float64))
        exact = torch.linalg.slogdet(jacobian)[1]
        ours = stout_log_det(eps, traceless_antihermitian(u @ a), u @ a)
        worst = max(worst, abs(float(exact - ours)))
    return worst


def hmc_configurations(theory, n: int, trajectories: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    params = HMCParameters(trajectory_length=1.0, n_steps=12)
    links, _ = thermalise(theory, theory.hot_start(n, generator=generator), params, trajectories, generator,
                          tune=False, target=None)
    plaquette = float(average_plaquette(theory.links_as_matrices(links)).mean())
    print(f"HMC: {n} chains, {trajectories} trajectories of {params.n_steps} steps, plaquette {plaquette:.4f}",
          flush=True)
    return links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("theory", choices=("su2", "su3"))
    parser.add_argument("beta", type=float)
    parser.add_argument("--lattice", default="4x4x4x4")
    parser.add_argument("--stacks", nargs="+", default=["sum", "each", "stout,each"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16, help="configurations a step")
    parser.add_argument("--configurations", type=int, default=64)
    parser.add_argument("--trajectories", type=int, default=40, help="HMC trajectories from a hot start")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--estimator", choices=("path", "reparam"), default="path",
                        help="gradient estimator; stacks with a stout step (no inverse) train with reparam")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds: 8 configurations, 20 steps")
    args = parser.parse_args()
    if args.quick:
        args.configurations, args.trajectories, args.steps, args.batch_size = 8, 2, 20, 4

    torch.set_num_threads(1)
    theory = make_theory(args.theory, args.lattice, beta=args.beta)
    n_colors, mu, parity = theory.n_colors, theory.dimension - 1, 1
    active = staple_link_mask(theory.lattice_shape, mu, parity)  # the links every stack moves
    n_active = int(active.sum())
    difference = check_stout_log_det(n_colors)
    print(f"stout log-det against autograd: largest difference {difference:.1e}", flush=True)
    if difference > 1e-9:
        raise SystemExit("the stout log-det disagrees with autograd")
    configurations = hmc_configurations(theory, args.configurations, args.trajectories, args.seed)
    staple_sums = theory.staples(configurations, mu)[:, active]  # [configurations, n_active, N, N]
    n_links = theory.dimension * theory.volume
    print(f"| stack | gradients | steps | CPU-s / step | var(log w) per link, last 3 checks | x {n_links} links |")
    print("|---|---|---|---|---|---|")
    for stack in args.stacks:
        torch.manual_seed(args.seed)
        layers = torch.nn.ModuleList(
            StoutStep(theory.lattice_shape, n_colors, mu, parity, (32, 32)) if kind == "stout" else
            SUNStapleCoupling(theory.lattice_shape, n_colors, mu, parity, SpectralTransform(n_colors), (32, 32),
                              centres=kind)
            for kind in stack.split(","))

        # path gradients (the 4D default) need the inverse, which the stout prototype lacks
        path = args.estimator == "path" and "stout" not in stack.split(",")

        def log_weights(index, redraws=1):
            """``log p - log q`` of the mapped links, up to the configurations' ``log Z``."""
            links = configurations[index].repeat_interleave(redraws, 0).clone()
            links[:, mu][:, active] = haar_random_sun((len(index) * redraws, n_active), n_colors)
            log_det = 0
            for layer in layers:
                links, layer_log_det = layer(links)
                log_det = log_det + layer_log_det
            if path and torch.is_grad_enabled():
                # log q through the inverse at frozen parameters: only the dependence through
                # the sample is differentiated (Vaitl et al., arXiv:2207.08219)
                log_det, back = 0, links
                with frozen_parameters(layers):
                    for layer in reversed(layers):
                        back, layer_log_det = layer.inverse(back)
                        log_det = log_det - layer_log_det
            staple_sum = staple_sums[index].repeat_interleave(redraws, 0)
            return (args.beta / n_colors) * real_trace(links[:, mu][:, active] @ staple_sum).sum(-1) + log_det

        optimizer = torch.optim.Adam(layers.parameters(), args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        checks, checking, began = [], 0.0, time.process_time()
        for step in range(1, args.steps + 1):
            index = torch.randint(len(configurations), (args.batch_size,), generator=generator)
            loss = -log_weights(index).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 100 == 0 or step == args.steps:
                check_began = time.process_time()
                with torch.no_grad():  # the variance over 32 redraws at each of 8 fixed configurations
                    variance = log_weights(torch.arange(8), 32).view(8, 32).var(1).mean().item() / n_active
                checks.append(variance)
                checking += time.process_time() - check_began
        per_step = (time.process_time() - began - checking) / args.steps  # training alone
        last = checks[-3:]
        variances = " / ".join(f"{v:.4f}" for v in last)
        print(f"| {stack} | {'path' if path else 'reparam'} | {args.steps} | {per_step:.2f} | {variances} | "
              f"{n_links * sum(last) / len(last):.1f} |", flush=True)


if __name__ == "__main__":
    main()
