"""jaxprune: functional pruning for JAX parameter pytrees."""
