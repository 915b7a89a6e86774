"""Training methods: supervised, FixMatch, the generative baselines, and the method."""
