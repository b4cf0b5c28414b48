"""Inference machinery shared by every task: fast predict paths, test-time
augmentation, the exported runtimes and the choice between them."""
