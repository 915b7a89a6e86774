"""Classifier builders, each named by its config class in schemas/classifiers.py; each returns a `Classifier`."""
