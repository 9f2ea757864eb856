"""The streaming step and what it shares with the reference trainer: schedules, optimizers, clipping."""
