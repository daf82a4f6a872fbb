"""gaugeflow.lattice -- lattice field theories, observables and ensembles."""
