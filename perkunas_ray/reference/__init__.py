"""The in-process PyTorch reference trainer: the correctness and speed baseline of the streaming runtime."""

from perkunas_ray.reference.trainer import ReferenceTrainer, TrainResult

__all__ = ["ReferenceTrainer", "TrainResult"]
