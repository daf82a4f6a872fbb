"""gaugeflow.hmc -- Markov chains: HMC on Lie groups and the analysis of their output."""
