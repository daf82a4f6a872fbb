"""One model contract: every kind of flow model is built, checkpointed, loaded, warm-started,
reweighted and sampled through it, so a new kind is one class and one registry line."""

import pytest
import torch

from gaugeflow.flows import TrainConfig, architecture, train_flow
from gaugeflow.flows.checkpoint import load_flow, warm_start
from gaugeflow.flows.contract import (_KINDS, FlowModel, build_model, kind_of, model_architecture,
                                      register_model_kind)
from gaugeflow.flows.model import LatticeFlow, upgrade_architecture
from gaugeflow.flows.pseudofermion_flow import PseudofermionFlow, pseudofermion_architecture
from gaugeflow.flows.reweighting import reweighted_estimates
from gaugeflow.hmc.run import make_sampler
from gaugeflow.lattice.errors import InputError
from gaugeflow.lattice.theories import make_theory


def test_both_built_in_kinds_meet_the_contract_and_old_architectures_keep_their_kind():
    u1 = make_theory("u1", "4x4", beta=1.0)
    joint = make_theory("schwinger-pseudofermion", "4x4", beta=1.0, kappa=0.2)
    flow_arch = architecture(u1, n_layers=2, hidden_channels=[4])
    joint_arch = model_architecture(joint, architecture(joint, n_layers=2, hidden_channels=[4]))
    assert model_architecture(u1, flow_arch) == flow_arch and joint_arch["model_kind"] == "pseudofermion"
    assert isinstance(build_model(flow_arch), LatticeFlow) and isinstance(build_model(joint_arch), PseudofermionFlow)
    assert all(isinstance(build_model(a), FlowModel) for a in (flow_arch, joint_arch))
    older = {k: v for k, v in joint_arch.items() if k != "model_kind"}  # a joint model saved before the field
    assert kind_of(older).name == "pseudofermion" and upgrade_architecture(older)["model_kind"] == "pseudofermion"
    assert pseudofermion_architecture(architecture(joint))["model_kind"] == "pseudofermion"
    with pytest.raises(InputError, match="unknown model kind 'nonsense'"):
        kind_of({**flow_arch, "model_kind": "nonsense"})


def test_a_kind_registered_from_outside_goes_through_checkpoints_reweighting_and_samplers(tmp_path, monkeypatch):
    monkeypatch.setattr("gaugeflow.flows.contract._KINDS", dict(_KINDS))

    class TemperedFlow(LatticeFlow):
        """A flow whose proposals are tagged; otherwise a plain flow."""

        def physical_field(self, x):
            self.measured = True
            return x

    register_model_kind("tempered", TemperedFlow)
    theory = make_theory("u1", "4x4", beta=1.0)
    arch = {**architecture(theory, n_layers=2, hidden_channels=[4]), "model_kind": "tempered"}
    torch.manual_seed(0)
    model = build_model(arch)
    assert type(model) is TemperedFlow
    train_flow(model, TrainConfig(steps=2, batch_size=4, eval_batches=1), tmp_path / "m.pt", progress=False)
    loaded = load_flow(tmp_path / "m.pt")
    assert type(loaded) is TemperedFlow
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    grown = build_model({**arch, "lattice": [8, 8]})
    warm_start(grown, tmp_path / "m.pt")
    assert type(grown) is TemperedFlow
    assert "plaquette" in reweighted_estimates(loaded, 8, 4) and loaded.measured
    sampler = make_sampler(loaded.theory, "flow", model=loaded.double())
    result = sampler.update(loaded.theory.hot_start(2, generator=torch.Generator().manual_seed(1)).double(),
                            torch.Generator().manual_seed(2))
    assert result.field.shape == (2, 2, 4, 4)
    with pytest.raises(InputError, match="must implement"):
        register_model_kind("broken", dict)
