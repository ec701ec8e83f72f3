"""A task written as two functions, for the core's tests (gflownet/core/function_task.py).

The known-target toy's action space (the words w1..w4, then "?") with a reward over texts: each
mention of the record's favourite word adds 1.5 nats, each word costs 0.5. Its 84 samples can be
enumerated, so a test can compare the trained sampler with R/Z exactly.
"""


def prompt(record) -> str:
    return "<s>"


def reward(texts, favourite):
    out = []
    for text, word in zip(texts, favourite):
        words = text.removesuffix("?").split()
        out.append(1.5 * words.count(word) - 0.5 * len(words))
    return out
