"""Main task models (MTMs): the Task protocol and its base (:mod:`lts_jax.tasks.base`), one minibatch-scan
trainer (:mod:`lts_jax.tasks.trainer`), and the paper's tasks: car counting, segmentation, an SVM on the host.
"""

from lts_jax.tasks.base import StrategyDeclaration, Task, TaskBase

__all__ = ["StrategyDeclaration", "Task", "TaskBase"]
