"""Tasks: data, outputs, task loss and metrics for each kind of problem."""

from kdforge.tasks.base import TASKS, Task

__all__ = ["TASKS", "Task"]
