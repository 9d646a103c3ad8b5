"""The scale-out proof: a production-shaped cluster on one machine, faults injected, invariants checked."""
