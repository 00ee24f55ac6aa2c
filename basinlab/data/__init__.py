"""Offline data: the verified MNIST cache and the continual-learning task streams built on it."""

from basinlab.data.mnist import MnistArrays, load_mnist, prepare_mnist
from basinlab.data.streams import Task, TaskStream, build_tasks

__all__ = ["MnistArrays", "Task", "TaskStream", "build_tasks", "load_mnist", "prepare_mnist"]
