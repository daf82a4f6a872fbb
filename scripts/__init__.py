"""Command-line programs of gaugeflow (thin wrappers around lattice/, flows/, hmc/)."""
