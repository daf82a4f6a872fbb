"""The Schwinger model: the Wilson operator, exact-determinant and pseudofermion HMC, and their
agreement with quenched configurations reweighted by det(D^dagger D) computed independently."""

import math

import numpy as np
import pytest
import torch

from gaugeflow.hmc import HMCParameters, HMCSampler, analyze_ensemble, gamma_method, generate_ensemble, jackknife
from gaugeflow.hmc.hmc import molecular_dynamics
from gaugeflow.lattice import ActionPart, InputError, open_ensemble
from gaugeflow.lattice.fermions import (GAMMA5, EvenOddWilson, apply_wilson, apply_wilson_dagger, checkerboard,
                                        conjugate_gradient, schur_matrix, wilson_matrix)
from gaugeflow.lattice.theories import make_theory

from md_checks import check_reversible_and_second_order


def hot(shape, batch, seed):
    return 2 * math.pi * torch.rand(batch, 2, *shape, generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.float64) - math.pi


def dense_by_hand(theta, kappa):
    """D from the hopping formula, entry by entry (numpy, independent of lattice.fermions)."""
    _, l0, l1 = theta.shape
    volume = l0 * l1
    gammas = [np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]])]
    d = np.eye(2 * volume, dtype=complex)
    for x0 in range(l0):
        for x1 in range(l1):
            here = x0 * l1 + x1
            for mu in range(2):
                step = (1, 0) if mu == 0 else (0, 1)
                up = ((x0 + step[0]) % l0, (x1 + step[1]) % l1)
                down = ((x0 - step[0]) % l0, (x1 - step[1]) % l1)
                sign_up = -1 if mu == 1 and x1 == l1 - 1 else 1  # antiperiodic in time
                sign_down = -1 if mu == 1 and x1 == 0 else 1
                forward = -kappa * sign_up * np.exp(1j * theta[mu, x0, x1]) * (np.eye(2) - gammas[mu])
                backward = -kappa * sign_down * np.exp(-1j * theta[mu, down[0], down[1]]) * (np.eye(2) + gammas[mu])
                for s in range(2):
                    for t in range(2):
                        d[s * volume + here, t * volume + up[0] * l1 + up[1]] += forward[s, t]
                        d[s * volume + here, t * volume + down[0] * l1 + down[1]] += backward[s, t]
    return d


def test_free_spectrum_is_the_analytic_one():
    l0, l1, kappa = 4, 6, 0.2
    eigenvalues = torch.linalg.eigvals(wilson_matrix(torch.zeros(1, 2, l0, l1, dtype=torch.float64), kappa)[0])
    expected = []
    for n0 in range(l0):
        for n1 in range(l1):
            p0, p1 = 2 * math.pi * n0 / l0, 2 * math.pi * (n1 + 0.5) / l1  # antiperiodic in time
            real = 1 - 2 * kappa * (math.cos(p0) + math.cos(p1))
            imaginary = 2 * kappa * math.sqrt(math.sin(p0) ** 2 + math.sin(p1) ** 2)
            expected += [complex(real, imaginary), complex(real, -imaginary)]
    rounded = lambda z: (round(z.real, 9), round(z.imag, 9))  # noqa: E731
    assert sorted(map(rounded, eigenvalues.tolist())) == sorted(map(rounded, expected))


def test_operator_matches_the_formula_is_gamma5_hermitian_and_gauge_covariant():
    theta = hot((4, 6), 3, 1)
    kappa = 0.23
    dense = wilson_matrix(theta, kappa)
    for b in range(3):
        assert np.abs(dense[b].numpy() - dense_by_hand(theta[b].numpy(), kappa)).max() < 1e-14
    gamma5 = torch.kron(GAMMA5, torch.eye(24, dtype=torch.complex128))
    assert (dense.conj().transpose(-1, -2) - gamma5 @ dense @ gamma5).abs().max() < 1e-14
    psi = torch.randn(3, 2, 4, 6, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    assert (apply_wilson_dagger(theta, psi, kappa).reshape(3, -1)
            - (dense.conj().transpose(-1, -2) @ psi.reshape(3, -1, 1))[..., 0]).abs().max() < 1e-14
    theory = make_theory("schwinger", "4x6", beta=1.0, kappa=kappa)
    alpha = theory.random_gauge_transformation(3, generator=torch.Generator().manual_seed(3))
    rotated = torch.polar(torch.ones_like(alpha), alpha)[:, None]
    left = apply_wilson(theory.gauge_transform(theta, alpha), rotated * psi, kappa)
    assert (left - rotated * apply_wilson(theta, psi, kappa)).abs().max() < 1e-13
    assert (theory.action(theory.gauge_transform(theta, alpha)) - theory.action(theta)).abs().max() < 1e-10


def test_conjugate_gradient_solves_the_normal_equations():
    theta, kappa = hot((4, 4), 4, 5), 0.24
    b = torch.randn(4, 2, 4, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(6))
    normal = lambda v: apply_wilson_dagger(theta, apply_wilson(theta, v, kappa), kappa)  # noqa: E731
    x, report = conjugate_gradient(normal, b, tolerance=1e-12)
    assert (normal(x) - b).abs().max() < 1e-10 and 0 < report.iterations < 200
    with pytest.raises(InputError, match="did not converge"):
        conjugate_gradient(normal, b, tolerance=1e-12, max_iterations=3)


def test_even_odd_schur_complement_has_the_determinant_of_d_and_needs_fewer_cg_iterations():
    theta, kappa, volume = hot((4, 6), 3, 7), 0.26, 24
    dense, schur = wilson_matrix(theta, kappa), schur_matrix(theta, kappa)
    board = checkerboard((4, 6))
    even, odd = ([s * volume + site for s in range(2) for site in board.sites[p].tolist()] for p in (0, 1))

    def block(rows, columns):
        return dense[:, rows][:, :, columns]

    assert (block(even, even) - torch.eye(volume)).abs().max() == 0  # D_ee = 1 in the hopping form
    complement = block(odd, odd) - block(odd, even) @ block(even, odd)
    assert (schur - complement).abs().max() < 1e-14
    assert (torch.linalg.det(dense) / torch.linalg.det(schur) - 1).abs().max() < 1e-10
    gamma5 = torch.kron(GAMMA5, torch.eye(volume // 2, dtype=torch.complex128))
    assert (schur.conj().transpose(-1, -2) - gamma5 @ schur @ gamma5).abs().max() < 1e-14

    def iterations(normal, shape):
        b = torch.randn(*shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(8))
        return conjugate_gradient(normal, b, tolerance=1e-12)[1].iterations

    full = iterations(lambda v: apply_wilson_dagger(theta, apply_wilson(theta, v, kappa), kappa), (3, 2, 4, 6))
    preconditioned = iterations(EvenOddWilson(theta, kappa).apply_normal, (3, 2, volume // 2))
    print(f"CG iterations on 4x6 at kappa={kappa}: D^dagger D {full}, even-odd {preconditioned}")
    assert preconditioned < full
    with pytest.raises(InputError, match="even extents"):
        make_theory("schwinger", "4x5", beta=1.0, kappa=0.2, fermions="pseudofermion")


def test_even_odd_pseudofermion_action_and_force_match_the_dense_computation():
    """phi^dagger (D_hat^dagger D_hat)^{-1} phi and its force against a dense solve differentiated
    by autograd."""
    theory = make_theory("schwinger", "4x4", beta=2.0, kappa=0.25, fermions="pseudofermion")
    generator = torch.Generator().manual_seed(9)
    theta = theory.hot_start(3, generator=generator)
    theory = theory.refresh_auxiliary_fields(theta, generator)
    phi = theory.fermions.pseudofermions.reshape(3, -1, 1)
    leaf = theta.clone().requires_grad_(True)
    schur = schur_matrix(leaf, theory.kappa)
    dense_action = (phi.conj().transpose(-1, -2) @ torch.linalg.solve(schur.conj().transpose(-1, -2) @ schur, phi))
    (gradient,) = torch.autograd.grad(dense_action.real.sum(), leaf)
    assert (theory.fermion_action(theta) - dense_action.real.flatten()).abs().max() < 1e-10
    assert (theory.fermion_force(theta) - gradient).abs().max() < 1e-9


@pytest.mark.parametrize("name", ["schwinger", "schwinger-pseudofermion"])
def test_forces_reversibility_and_dh_scaling(name):
    theory = make_theory(name, "4x4", beta=2.0, kappa=0.2)
    generator = torch.Generator().manual_seed(0)
    theta = theory.hot_start(8, generator=generator)
    theory = theory.refresh_auxiliary_fields(theta, generator)  # draws pseudofermions (if any)
    eps, site = 1e-6, (0, 1, 1, 2)
    bump = torch.zeros_like(theta)
    bump[site] = eps
    finite_difference = (theory.action(theta + bump) - theory.action(theta - bump))[0] / (2 * eps)
    assert abs(theory.force(theta)[site] - finite_difference) < 1e-6
    check_reversible_and_second_order(theory, theta, generator)


@pytest.mark.parametrize("fermions", ["exact", "pseudofermion"])
def test_multiple_time_scales_are_reversible_second_order_and_nested(fermions):
    theory = make_theory("schwinger", "4x4", beta=2.0, kappa=0.2, fermions=fermions)
    generator = torch.Generator().manual_seed(4)
    theta = theory.hot_start(8, generator=generator)
    theory = theory.refresh_auxiliary_fields(theta, generator)
    gauge, fermion = theory.action_parts()
    assert (gauge.action(theta) + fermion.action(theta) - theory.action(theta)).abs().max() < 1e-10
    assert (gauge.force(theta) + fermion.force(theta) - theory.force(theta)).abs().max() < 1e-10
    check_reversible_and_second_order(theory, theta, generator, md_substeps=4)

    calls = {"gauge": 0, "fermions": 0}

    def counted(part):
        def force(field):
            calls[part.name] += 1
            return part.force(field)
        return ActionPart(part.name, part.action, force)

    class Counted:  # the theory with its forces counted
        field, action_parts = theory.field, lambda self: (counted(gauge), counted(fermion))

    momenta = theory.field.random_momenta(theta, generator)
    molecular_dynamics(Counted(), theta, momenta, HMCParameters(1.0, 5, "leapfrog", 0.0, md_substeps=3))
    assert calls == {"fermions": 5 + 1, "gauge": 5 * (3 + 1)}  # leapfrog: n + 1 kicks per level and drift
    with pytest.raises(InputError, match="md_substeps=3 needs an action of several parts"):
        HMCSampler(make_theory("u1", "4x4", beta=1.0), HMCParameters(md_substeps=3))


def test_exact_pseudofermion_and_reweighted_quenched_agree(tmp_path):
    """... and pseudofermion HMC on two time scales (gauge force 4x finer)."""
    beta, kappa, chains = 2.0, 0.24, 16
    run = dict(n_chains=chains, n_therm=30, seed=11, progress=False)
    plaquettes = {}
    for label, name, params in (("schwinger", "schwinger", HMCParameters(1.0, 5)),
                                ("pseudofermion", "schwinger-pseudofermion", HMCParameters(1.0, 5)),
                                ("pseudofermion, md_substeps=4", "schwinger-pseudofermion",
                                 HMCParameters(1.0, 3, md_substeps=4))):
        path = tmp_path / f"{len(plaquettes)}.h5"
        generate_ensemble(make_theory(name, "4x4", beta=beta, kappa=kappa), path, n_configs=chains * 150, params=params,
                          **run)
        results = analyze_ensemble(path)
        plaquettes[label] = results["plaquette"]
        print(f"{label}: acceptance {results['acceptance']['mean']:.3f}")
    quenched = tmp_path / "quenched.h5"
    generate_ensemble(make_theory("u1", "4x4", beta=beta), quenched, n_configs=chains * 300,
                      params=HMCParameters(1.0, 5), **run)
    with open_ensemble(quenched) as ensemble:
        configs = ensemble.configs()
        index = ensemble.per_chain(np.arange(len(ensemble)))
        plaquette = ensemble.column("plaquette")
    log_det = np.array([np.linalg.slogdet(dense_by_hand(c, kappa))[1] * 2 for c in configs])  # det(D^dagger D)
    weights = np.exp(log_det - log_det.max())
    mean, error = jackknife(lambda wp, w: wp / w, [weights[i] * plaquette[i] for i in index], [weights[i] for i in index])
    plaquettes["quenched, reweighted"] = {"mean": mean, "error": error}
    unweighted = gamma_method([plaquette[i] for i in index])
    for name, r in plaquettes.items():
        print(f"schwinger 4x4 beta={beta} kappa={kappa}: {name} plaquette {r['mean']:.5f} +- {r['error']:.5f}")
    print(f"quenched plaquette {unweighted.mean:.5f} +- {unweighted.error:.5f}")
    names = list(plaquettes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            difference = abs(plaquettes[a]["mean"] - plaquettes[b]["mean"])
            assert difference < 3 * math.hypot(plaquettes[a]["error"], plaquettes[b]["error"]), (a, b)
    shift = plaquettes["schwinger"]["mean"] - unweighted.mean  # the fermions matter at this precision
    assert abs(shift) > 3 * math.hypot(plaquettes["schwinger"]["error"], unweighted.error)


def test_kappa_cannot_be_conditioned_on_and_the_command_line_runs_it(tmp_path):
    import subprocess
    import sys

    from gaugeflow.flows.target import LatticeTarget

    with pytest.raises(InputError, match="not affine"):
        LatticeTarget(make_theory("schwinger", "4x4", beta=1.0, kappa=0.2), "kappa")
    out = tmp_path / "s.h5"
    result = subprocess.run([sys.executable, "-m", "gaugeflow.cli", "hmc", "--theory", "schwinger", "--fermions",
                             "pseudofermion", "--lattice", "4x4", "--beta", "2", "--kappa", "0.2", "--n-configs", "4",
                             "--chains", "2", "--therm", "2", "--quiet", "--out", str(out)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "chiral_condensate" in analyze_ensemble(out)
    with open_ensemble(out) as ensemble:  # the file names the fermion treatment: a resume rebuilds the same theory
        assert ensemble.theory_name == "schwinger-pseudofermion"


def test_the_fermion_treatment_is_an_option_and_the_old_name_still_works():
    from gaugeflow.cli import main
    from gaugeflow.lattice.schwinger import ExactDeterminant, Pseudofermions

    by_option = make_theory("schwinger", "4x4", beta=2.0, kappa=0.2, fermions="pseudofermion")
    by_name = make_theory("schwinger-pseudofermion", "4x4", beta=2.0, kappa=0.2)
    assert type(by_option.fermions) is type(by_name.fermions) is Pseudofermions
    assert by_option.name == by_name.name == "schwinger-pseudofermion"
    assert make_theory(by_option.name, "4x4", **by_option.couplings).name == by_option.name
    assert type(make_theory("schwinger", "4x4", beta=2.0, kappa=0.2).fermions) is ExactDeterminant
    with pytest.raises(InputError, match="cannot be combined with fermions=exact"):
        make_theory("schwinger-pseudofermion", "4x4", beta=2.0, kappa=0.2, fermions="exact")
    with pytest.raises(InputError, match="takes no coupling.s. or option.s. fermions"):
        make_theory("u1", "4x4", beta=2.0, fermions="exact")
    with pytest.raises(SystemExit):  # argparse refuses an unknown treatment
        main(["hmc", "--theory", "schwinger", "--fermions", "staggered", "--lattice", "4x4", "--out", "x.h5"])


def test_the_command_line_runs_two_time_scales(tmp_path):
    from gaugeflow.cli import main

    out = tmp_path / "mts.h5"
    common = ["--lattice", "4x4", "--beta", "2", "--n-configs", "4", "--chains", "2", "--therm", "2", "--quiet",
              "--md-substeps", "3"]
    assert main(["hmc", "--theory", "schwinger", "--fermions", "pseudofermion", "--kappa", "0.2", *common,
                 "--out", str(out)]) == 0
    with open_ensemble(out) as ensemble:
        assert ensemble.attrs["md_substeps"] == 3
    assert main(["hmc", "--theory", "u1", *common, "--out", str(tmp_path / "u1.h5")]) == 2  # one part: refused


def test_flows_on_the_exact_determinant_target_sample_exactly(tmp_path):
    """The U(1) gauge flow trained (briefly) on S_gauge - log det(D^dagger D): the composite chain
    built on it agrees with exact-determinant HMC.  (Independence Metropolis alone accepts ~3%
    of proposals of such a model: too few for a test-sized run.)"""
    from gaugeflow.flows import TrainConfig, architecture, build_flow, train_flow

    theory = make_theory("schwinger", "4x4", beta=2.0, kappa=0.24)
    torch.manual_seed(0)
    model = build_flow(architecture(theory, n_layers=4, hidden_channels=[8]))
    train_flow(model, TrainConfig(steps=20, batch_size=32, log_every=20, checkpoint_every=20), tmp_path / "m.pt",
               progress=False)
    run = dict(n_chains=16, n_therm=20, seed=5, progress=False, params=HMCParameters(1.0, 5))
    results = {}
    for sampler, kwargs in (("hmc", {}), ("composite", {"hmc_per_step": 1})):
        path = tmp_path / f"{sampler}.h5"
        generate_ensemble(theory, path, sampler=sampler, model=None if sampler == "hmc" else model,
                          n_configs=16 * 120, **run, **kwargs)
        results[sampler] = analyze_ensemble(path)
        print(f"schwinger 4x4 exact-det {sampler}: plaquette {results[sampler]['plaquette']['mean']:.5f} +- "
              f"{results[sampler]['plaquette']['error']:.5f}, acceptance {results[sampler]['acceptance']['mean']:.3f}")
    a, b = results["composite"]["plaquette"], results["hmc"]["plaquette"]
    assert abs(a["mean"] - b["mean"]) < 3 * math.hypot(a["error"], b["error"])
    assert results["composite"]["acceptance"]["mean"] > 0.002  # flow proposals are really accepted


def test_free_pion_effective_mass_is_twice_the_quark_pole_mass():
    from gaugeflow.lattice.schwinger import pion_correlator

    kappa = 0.2
    theta = torch.zeros(1, 2, 4, 32, dtype=torch.float64)
    correlator = pion_correlator(torch.linalg.inv(wilson_matrix(theta, kappa)), (4, 32))[0]
    effective = torch.log(correlator[:-1] / correlator[1:])
    m0 = 1 / (2 * kappa) - 2
    assert abs(effective[9].item() - 2 * math.log(1 + m0)) < 1e-3  # Wilson fermions, r = 1: E(p=0) = log(1 + m0)
    assert torch.allclose(correlator[1:16], torch.flip(correlator[17:], [0]), rtol=1e-12)  # symmetric: t -> T - t
