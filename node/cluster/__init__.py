"""Cluster membership by gossip (SWIM with Lifeguard)."""
