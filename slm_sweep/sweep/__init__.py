"""Sweep support: finding cells already done (resume, seed-independent reuse) and end-of-sweep aggregation."""
