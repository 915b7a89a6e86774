"""A run's classifier as an MLflow Model: written by `package`, checked by `verify`, loaded by `pyfunc`.

MLflow names `runner.model_export.pyfunc` as the model's loader module: loading imports it from the installed
metassl, and the model's folder holds only data (safetensors weights, the recipe, a small JSON), never code or pickle.
"""
