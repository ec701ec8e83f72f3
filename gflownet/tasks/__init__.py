"""Tasks: each is a prompt builder, its data and its reward, on the task-independent core.

* ``contradiction``: questions whose answers contradict a knowledge edit (the project's first job).
* ``next_sentence``: one-sentence continuations of a prompt, reward = reward-LM likelihood (Hu et al. 2023).
* ``toy``: an enumerable problem with a known target, the proof that training matches R/Z.

How to add one: docs/design.md, "Adding a task".
"""
