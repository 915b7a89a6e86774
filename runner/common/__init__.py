"""Helpers that both a training run (`runner.run`) and generator pretraining (`runner.pretraining`) use.

They import nothing from either, so each reaches them downward.
"""
