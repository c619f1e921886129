"""Out-of-domain detection: the scores (a registry), the thresholds and the detector that gives every answer a verdict."""
