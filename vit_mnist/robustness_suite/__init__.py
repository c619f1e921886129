"""The corruption benchmark as a library: the suite (suite.py), scoring models on it (scoring.py), and the
measurement a training run makes of its tested weights (after_training.py). Its reports: vit_mnist.reports.robustness."""
