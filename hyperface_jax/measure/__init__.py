"""Measurement: the exact figures of a packing (`metrics`), sampled estimates with their
intervals (`estimates`), the Levenshtein bound (`bounds`) and a generated dataset's
quality measures (`quality`)."""
