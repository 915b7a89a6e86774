"""Dataset adapters, the labeled/validation split, and on-device batches with augmentation."""
