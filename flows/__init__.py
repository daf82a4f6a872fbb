"""gaugeflow.flows -- normalizing flows for lattice field theory (built on normflows)."""
