"""The task-independent GFlowNet core: sampling and scoring, losses, replay buffers, the rank-0
exchange, the KV cache, model loading and the one LightningModule (``LMGFlowNet``).

It imports nothing from ``gflownet.tasks`` (tests/test_architecture.py checks): a task reaches
the core only through the ``Task`` and ``Reward`` protocols of ``gflownet.core.protocols``.
"""
