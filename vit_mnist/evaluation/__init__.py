"""Evaluating trained checkpoints: the test-split reports (evaluate.py) and the robustness benchmark (robustness.py),
each on the data the checkpoint itself records (checkpoint_data.py)."""
