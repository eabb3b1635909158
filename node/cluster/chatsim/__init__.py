"""A deterministic simulation of a chat cluster: real nodes, simulated time, network and
storage, random faults, and a checker of the invariants (docs/cluster-simulation.md)."""
