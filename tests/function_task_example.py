"""Tasks written as two functions (gflownet/core/function_task.py), for the core's own tests.

``prompt``/``reward``: the known-target toy's action space (the words w1..w4, then "?") with a reward
over texts: each mention of the record's favourite word adds 1.5 nats, each word costs 0.5. Its 84
samples can be enumerated, so a test can compare the trained sampler with R/Z exactly.

``topic_prompt``/``topic_reward`` with ``CORE``: the task the core's pipeline tests train (on the tiny
GPT-2), so that what they check (checkpoints, resume, replay, the sample log, the update guards,
Redis) does not depend on the contradiction task's answerer and judge.
"""

TOPICS = ["Paris", "Mars", "the Moon", "Marie Curie", "the Nile", "Hamlet", "Mount Everest"]

# train.py overrides: the topic task on the tiny GPT-2, 5 training records and 2 held out
CORE = [
    "task=function_task", "model=tiny_gpt2", "task.prompt=tests.function_task_example.topic_prompt", "task.chat=false",
    "reward=function", "reward.fn=tests.function_task_example.topic_reward", "reward.prefixes=true",
    "data=function", "data.records=[" + ",".join(f"{{topic: '{t}'}}" for t in TOPICS) + "]", "data.val_size=2",
]


def prompt(record) -> str:
    return "<s>"


def reward(texts, favourite):
    out = []
    for text, word in zip(texts, favourite):
        words = text.removesuffix("?").split()
        out.append(1.5 * words.count(word) - 0.5 * len(words))
    return out


def topic_prompt(record) -> str:
    return f"A question about {record['topic']}:"


def topic_reward(texts, topic):
    """0 for naming the topic, -2 otherwise, and 0.1 per word (prefix texts too: reward.prefixes)."""
    return [(0.0 if t.lower() in text.lower() else -2.0) - 0.1 * len(text.split()) for text, t in zip(texts, topic)]


def topic_reward_by_length(texts, topic):
    """Another reward for the same task (a run with it signs its buffer entries apart)."""
    return [-0.2 * len(text.split()) for text in texts]


def value_reward(texts, value):
    """Each sample's log-reward is its record's ``value``, whatever the text: validation means are then
    known exactly from the records."""
    return [float(v) for v in value]
