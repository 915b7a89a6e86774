"""metassl: a YAML-driven runner for generative semi-supervised learning."""

__version__ = "0.1.0"
