"""Training machinery shared by every task: the Trainer, callbacks, checkpoints, optimiser,
fine-tuning schedules, EMA, devices and trackers."""
