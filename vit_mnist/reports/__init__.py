"""The reports of a test: per-image samples (samples.py), metrics and their files (classification.py), figures."""
