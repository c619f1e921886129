"""Out-of-domain detection: the scores (a registry), the thresholds, the detector that gives answers their verdicts."""
