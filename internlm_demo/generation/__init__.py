"""How tokens are made: generation parameters, the sampling rules, the simple path and the fast engine."""
