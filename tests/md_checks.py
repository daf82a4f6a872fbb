"""A check shared by the tests of every molecular dynamics (not collected by pytest itself)."""

from gaugeflow.hmc.hmc import HMCParameters, hamiltonian, molecular_dynamics


def check_reversible_and_second_order(theory, field, generator, steps=(8, 16, 32), ratio_range=(3.6, 4.4),
                                      md_substeps=1):
    """Leapfrog over tau = 0.5 (on ``md_substeps`` nested time scales if more than one) comes
    back with reversed momenta to 1e-10, and halving the step quarters the rms energy error.
    Returns the rms errors."""
    momenta = theory.field.random_momenta(field, generator)
    params = HMCParameters(0.5, steps[0], "leapfrog", 0.0, md_substeps)
    end, end_momenta = molecular_dynamics(theory, field, momenta, params)
    back, back_momenta = molecular_dynamics(theory, end, -end_momenta, params)
    assert (back - field).abs().max() < 1e-10 and (back_momenta + momenta).abs().max() < 1e-10
    errors = []
    for n_steps in steps:
        end, end_momenta = molecular_dynamics(theory, field, momenta, HMCParameters(0.5, n_steps, "leapfrog", 0.0, md_substeps))
        delta_h = hamiltonian(theory, end, end_momenta) - hamiltonian(theory, field, momenta)
        errors.append(delta_h.pow(2).mean().sqrt().item())
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(ratio_range[0] < r < ratio_range[1] for r in ratios), (errors, ratios)
    return errors
