"""Classifier builders. Each registers itself and returns a `Classifier`."""
