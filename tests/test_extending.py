"""The extension points, used from outside the package as a user would: a new theory (one
class plus one registry line), a new element-wise transform as a coupling layer, auxiliary
fields refreshed once per HMC trajectory, the sampler interface, and a sampler and a gradient
estimator registered by name."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from gaugeflow import analyze_ensemble, architecture, build_flow, generate_ensemble, make_theory, register_theory
from gaugeflow.cli.commands import build_parser, main
from gaugeflow.flows import (ElementwiseTransform, TrainConfig, estimators, register_estimator, register_kernel,
                             train_flow)
from gaugeflow.flows import model as flow_model
from gaugeflow.flows.target import LatticeTarget
from gaugeflow.hmc import (FlowMetropolisSampler, HMCParameters, HMCSampler, Sampler, TrajectoryResult, gamma_method,
                           hmc_trajectory, register_sampler, samplers)
from gaugeflow.hmc.run import make_sampler
from gaugeflow.lattice import AngleField, Coupling, InputError, RealField, Theory, open_ensemble, theories
from gaugeflow.lattice.geometry import shift, sum_per_config
from gaugeflow.lattice.groups import wrap_angle
from gaugeflow.lattice.phi4 import Phi4


class RotorRing(Theory):
    """1D O(2) rotor ring, ``S = -beta sum_x cos(theta_x - theta_{x+1})``, periodic."""

    name = "rotor"
    couplings_declared = (Coupling("beta", "nearest-neighbour coupling"),)

    def __init__(self, lattice_shape, *, beta):
        super().__init__(lattice_shape, beta=beta)
        if self.dimension != 1:
            raise InputError("the rotor ring is one-dimensional")
        self.field = AngleField()

    @property
    def config_shape(self):
        return self.lattice_shape

    def link_cosines(self, theta):
        return torch.cos(theta - shift(theta, 0, 1, 1))

    def action(self, theta):
        self.check_field(theta)
        return -self.couplings["beta"] * sum_per_config(self.link_cosines(theta))

    def hot_start(self, batch, *, generator=None, device=None, precision=torch.float64):
        uniform = torch.rand(batch, *self.config_shape, generator=generator, device=device, dtype=precision)
        return wrap_angle(2 * math.pi * uniform - math.pi)

    def cold_start(self, batch, *, device=None, precision=torch.float64):
        return torch.zeros(batch, *self.config_shape, device=device, dtype=precision)

    def observables(self, theta):
        return {"link_cosine": sum_per_config(self.link_cosines(theta)) / self.volume}


def rotor_link_cosine(beta, length, n_max=40):
    """``sum_n I_n'(beta) I_n(beta)^(L-1) / sum_n I_n(beta)^L`` (character expansion of the ring)."""
    n = np.arange(-n_max, n_max + 1)
    i_n = special.ive(n, beta)
    derivative = 0.5 * (special.ive(n - 1, beta) + special.ive(n + 1, beta))
    return float((derivative * i_n ** (length - 1)).sum() / (i_n**length).sum())


@pytest.fixture
def rotor_registered(monkeypatch):
    monkeypatch.setattr(theories, "_REGISTRY", dict(theories._REGISTRY))  # undone after the test
    register_theory(RotorRing)  # the one registry line


def test_a_theory_defined_outside_the_package_samples_its_exact_value(rotor_registered, tmp_path):
    theory = make_theory("rotor", "16", beta=1.0)
    assert "rotor" in theories.theory_names()
    generate_ensemble(theory, tmp_path / "rotor.h5", n_configs=16 * 150, n_chains=16, n_therm=40, seed=3,
                      params=HMCParameters(1.0, 8), progress=False)
    result = analyze_ensemble(tmp_path / "rotor.h5")["link_cosine"]
    exact = rotor_link_cosine(1.0, 16)
    print(f"rotor L=16 beta=1: <cos> = {result['mean']:.5f} +- {result['error']:.5f}, exact {exact:.5f}")
    # the formula: at L = 2 the sum is I_1(2 beta) / I_0(2 beta); at L = 16 near infinite volume, I_1/I_0
    assert abs(rotor_link_cosine(1.0, 2) - special.ive(1, 2.0) / special.ive(0, 2.0)) < 1e-12
    assert abs(exact - special.ive(1, 1.0) / special.ive(0, 1.0)) < 1e-4
    assert abs(result["mean"] - exact) < 3 * result["error"]
    assert result["error"] < 0.01


def test_the_command_line_offers_a_registered_theory(rotor_registered, tmp_path):
    args = build_parser().parse_args(["hmc", "--theory", "rotor", "--lattice", "8", "--beta", "0.5", "--out", "x.h5"])
    assert args.theory == "rotor" and args.beta == 0.5
    out = tmp_path / "cli.h5"
    assert main(["hmc", "--theory", "rotor", "--lattice", "8", "--beta", "0.5", "--n-configs", "8", "--chains", "2",
                 "--therm", "2", "--quiet", "--out", str(out)]) == 0
    assert main(["analyze", str(out), "--json"]) == 0


def test_unknown_names_list_what_is_registered(rotor_registered):
    with pytest.raises(InputError, match="unknown theory .rotr.; choose one of phi4, u1, suN, schwinger, rotor"):
        make_theory("rotr", "8", beta=1.0)


def test_conditioning_is_refused_on_a_coupling_the_action_is_not_affine_in(rotor_registered):
    class SquaredRotor(RotorRing):
        name = "squared_rotor"
        couplings_declared = (Coupling("beta", "enters squared", affine=False),)

        def action(self, theta):
            return -self.couplings["beta"] ** 2 * sum_per_config(self.link_cosines(theta))

    register_theory(SquaredRotor)
    with pytest.raises(InputError, match="not affine in it"):
        LatticeTarget(make_theory("squared_rotor", "8", beta=1.0), "beta")
    LatticeTarget(make_theory("rotor", "8", beta=1.0), "beta")  # affine: accepted


class SinhArcsinh(ElementwiseTransform):
    """``y = sinh(e^s asinh(x) + t)`` (Jones and Pewsey 2009), identity at ``s = t = 0``."""

    n_params = 2

    def forward(self, x, params):
        s, t = params[..., 0], params[..., 1]
        inner = torch.exp(s) * torch.asinh(x) + t
        log_cosh = inner.abs() + torch.log1p(torch.exp(-2 * inner.abs())) - math.log(2)
        return torch.sinh(inner), log_cosh + s - 0.5 * torch.log1p(x * x)

    def inverse(self, y, params):
        s, t = params[..., 0], params[..., 1]
        x = torch.sinh((torch.asinh(y) - t) * torch.exp(-s))
        return x, -self.forward(x, params)[1]


@pytest.fixture
def sinh_arcsinh_registered():
    register_kernel(RealField, "sinh-arcsinh", SinhArcsinh)  # the one registry line
    yield
    flow_model.layer_family(make_theory("phi4", "4x4", m2=1.0, lam=0.0)).kernels.pop("sinh-arcsinh")


def test_a_new_elementwise_transform_is_a_layer_without_layer_code(sinh_arcsinh_registered):
    theory = make_theory("phi4", "4x4", m2=-4.0, lam=8.0)
    torch.manual_seed(2)
    model = build_flow(architecture(theory, kernel="sinh-arcsinh", n_layers=4, hidden_channels=[4])).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(3, 4, 4, dtype=torch.float64)
    x, log_det = model.forward_and_log_det(z)
    back, log_det_inverse = model.inverse_and_log_det(x)
    assert (back - z).abs().max() < 1e-10 and (log_det + log_det_inverse).abs().max() < 1e-10
    assert log_det.abs().min() > 1e-2  # really transformed
    for b in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda v: model.forward_and_log_det(v.view(1, 4, 4))[0].flatten(),
                                                      z[b].flatten())
        assert abs(torch.linalg.slogdet(jacobian)[1] - log_det[b]) < 1e-10


class AuxiliaryScalar(Phi4):
    """One site, ``S_eff(x) = m2 x^2 - (1/2) log(1 + x^2)``, sampled with an auxiliary Gaussian
    ``chi ~ N(0, 1 + x^2)``: the joint action ``m2 x^2 + chi^2 / (2 (1 + x^2))`` has this marginal,
    just as pseudofermions ``phi^dagger (D^dagger D)^{-1} phi`` give ``det(D^dagger D)``."""

    name = "auxiliary_scalar"
    refreshes = 0

    def __init__(self, lattice_shape, *, m2, lam, chi=None):
        super().__init__(lattice_shape, m2=m2, lam=lam)
        self.chi = chi

    def action(self, phi):
        base = super().action(phi)
        if self.chi is None:
            return base - 0.5 * sum_per_config(torch.log1p(phi * phi))
        return base + 0.5 * sum_per_config(self.chi**2 / (1 + phi * phi))

    def force(self, phi):
        return Theory.force(self, phi)  # autograd of the action above

    def refresh_auxiliary_fields(self, phi, generator=None):
        AuxiliaryScalar.refreshes += 1
        refreshed = copy.copy(self)
        eta = torch.randn(phi.shape, generator=generator, dtype=phi.dtype, device=phi.device)
        refreshed.chi = torch.sqrt(1 + phi * phi) * eta
        return refreshed


def exact_auxiliary_x2(m2):
    weight = lambda x: math.exp(-m2 * x * x) * math.sqrt(1 + x * x)  # noqa: E731
    numerator = integrate.quad(lambda x: x * x * weight(x), -np.inf, np.inf)[0]
    return numerator / integrate.quad(weight, -np.inf, np.inf)[0]


def test_auxiliary_fields_are_refreshed_once_per_trajectory_and_give_the_exact_marginal():
    theory = AuxiliaryScalar((1,), m2=1.0, lam=0.0)
    generator = torch.Generator().manual_seed(5)
    field = theory.hot_start(256, generator=generator)
    params, series = HMCParameters(1.0, 6), []
    AuxiliaryScalar.refreshes = 0
    for trajectory in range(240):
        field = hmc_trajectory(theory, field, params, generator).field
        if trajectory >= 40:
            series.append((field[:, 0] ** 2).numpy())
    assert AuxiliaryScalar.refreshes == 240
    result = gamma_method(list(np.array(series).T))
    exact, free = exact_auxiliary_x2(1.0), 0.5
    print(f"auxiliary field: <x^2> = {result.mean:.4f} +- {result.error:.4f}, exact {exact:.4f}, without it {free}")
    assert abs(result.mean - exact) < 3 * result.error
    assert abs(exact - free) > 10 * result.error  # the auxiliary field matters at this precision


def test_both_samplers_implement_the_protocol():
    theory = make_theory("u1", "4x4", beta=1.0)
    assert isinstance(HMCSampler(theory), Sampler)
    assert isinstance(FlowMetropolisSampler(build_flow(architecture(theory, n_layers=2))), Sampler)


class RandomWalk:
    """Metropolis with a uniform random shift of every variable: a sampler written outside the package."""

    name = "random-walk"

    def __init__(self, theory, width=0.2):
        self.theory, self.width = theory, width

    def run_parameters(self):
        return {"width": self.width}

    def thermalise(self, field, n_therm, generator, progress=False, received=None):
        for _ in range(n_therm):
            field = self.update(field, generator).field
        return field

    def update(self, field, generator):
        step = self.width * (2 * torch.rand(field.shape, generator=generator, dtype=field.dtype) - 1)
        proposal = self.theory.field.project(field + step)
        delta_s = self.theory.action(proposal) - self.theory.action(field)
        accepted = torch.rand(len(field), generator=generator, dtype=torch.float64) < torch.exp(-delta_s)
        return TrajectoryResult(torch.where(accepted.view(-1, *[1] * (field.dim() - 1)), proposal, field), accepted,
                                delta_s)

    def resume_attributes(self):
        return {}

    def restore(self, state):
        pass

    def postfix(self):
        return {}


class TwoFlowSteps(FlowMetropolisSampler):
    """Two independence-Metropolis steps per update: a sampler that needs the trained flow."""

    name = "flow-twice"

    def update(self, field, generator):
        first = super().update(field, generator)
        second = super().update(first.field, generator)
        return TrajectoryResult(second.field, first.accepted | second.accepted, second.delta_h)


@pytest.fixture
def samplers_registered(monkeypatch):
    monkeypatch.setattr(samplers, "_REGISTRY", dict(samplers._REGISTRY))  # undone after the test
    register_sampler("random-walk", lambda theory, model, options: RandomWalk(theory))
    register_sampler("flow-twice", lambda theory, model, options: TwoFlowSteps(model, options.source), needs_model=True,
                     description="two flow proposals per update")


def test_a_sampler_registered_outside_the_package_runs_by_name(samplers_registered, tmp_path):
    theory = make_theory("u1", "4x4", beta=1.0)
    assert isinstance(make_sampler(theory, "random-walk"), Sampler)
    path = tmp_path / "walk.h5"
    summary = generate_ensemble(theory, path, sampler="random-walk", n_configs=8, n_chains=2, n_therm=4, seed=2,
                                progress=False)
    assert 0 < summary.acceptance < 1
    generate_ensemble(theory, path, sampler="random-walk", n_configs=12, n_chains=2, n_therm=4, seed=2, progress=False,
                      resume=True)
    with open_ensemble(path) as ensemble:
        assert ensemble.attrs["sampler"] == "random-walk" and float(ensemble.attrs["width"]) == 0.2 and len(ensemble) == 12
    with pytest.raises(InputError, match="unknown sampler 'random-walks'; choose one of hmc, .*, random-walk, flow-twice"):
        make_sampler(theory, "random-walks")


def test_the_command_line_offers_a_registered_flow_sampler(samplers_registered, tmp_path):
    sample = ["sample", "--model", "m.pt", "--out", "e.h5", "--sampler"]
    assert build_parser().parse_args(sample + ["flow-twice"]).sampler == "flow-twice"
    with pytest.raises(SystemExit):  # a sampler without a flow is no choice of 'gaugeflow sample'
        build_parser().parse_args(sample + ["random-walk"])
    theory = make_theory("u1", "4x4", beta=1.0)
    torch.manual_seed(0)
    model, checkpoint = build_flow(architecture(theory, n_layers=2, hidden_channels=[4])), tmp_path / "m.pt"
    train_flow(model, TrainConfig(steps=1, batch_size=4, log_every=1, checkpoint_every=1, eval_batches=1), checkpoint,
               progress=False)
    out = tmp_path / "twice.h5"
    assert main(["sample", "--model", str(checkpoint), "--sampler", "flow-twice", "--n-configs", "4", "--chains", "2",
                 "--therm", "1", "--quiet", "--out", str(out)]) == 0
    with open_ensemble(out) as ensemble:
        assert ensemble.attrs["sampler"] == "flow-twice" and len(ensemble) == 4


def leave_one_out(model, batch_size, context):
    """REINFORCE with a leave-one-out baseline: an estimator written outside the package."""
    leave_one_out.calls += 1
    with torch.no_grad():
        x, log_q = model.sample(batch_size, context)
        log_p = model.target_log_prob(x, context)
    signal = log_q - log_p
    baseline = (signal.sum() - signal) / (batch_size - 1)
    surrogate = ((signal - baseline) * model.log_prob(x, context)).mean()
    return surrogate, signal.mean(), log_q, log_p


@pytest.fixture
def estimator_registered(monkeypatch):
    monkeypatch.setattr(estimators, "_REGISTRY", dict(estimators._REGISTRY))  # undone after the test
    register_estimator("leave-one-out", leave_one_out, "REINFORCE with a leave-one-out baseline")


def test_an_estimator_registered_outside_the_package_trains_by_name(estimator_registered, tmp_path):
    theory = make_theory("u1", "4x4", beta=1.0)
    torch.manual_seed(0)
    model = build_flow(architecture(theory, n_layers=2, hidden_channels=[4], prior="haar"))
    leave_one_out.calls = 0
    train_flow(model, TrainConfig(steps=3, batch_size=8, estimator="leave-one-out", log_every=3, checkpoint_every=3,
                                  eval_batches=1), tmp_path / "m.pt", progress=False)
    assert leave_one_out.calls == 3
    # its gradient at fixed samples: the score-function one, with each sample's baseline the others' mean
    surrogate, loss, log_q, log_p = leave_one_out(model.double(), 4, None)
    surrogate.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert build_parser().parse_args(["train", "--theory", "u1", "--lattice", "4x4", "--beta", "1", "--estimator",
                                      "leave-one-out", "--out", "m.pt"]).estimator == "leave-one-out"
    with pytest.raises(InputError, match="unknown estimator 'loo'; choose one of path, reparam, reinforce, leave-one-out"):
        TrainConfig(estimator="loo")
