"""Dataset adapters. Each module registers its builders with `@DATASETS.register(name)`."""
