"""Dataset adapters. Each `build_<name>` is named by its config class in schemas/data.py."""
