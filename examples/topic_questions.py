"""A task written as two functions (``python train.py task=function_task``): questions about a topic.

The sampler is asked for a question about the record's topic; the reward function gives 0 to a
question that names the topic and -5 to one that does not (log-rewards). ``reward=function_lm``
adds the base model's log-likelihood of the question, so the target is the base model's own
questions, tilted towards those about the topic. Copy this file to start your own task: change the
two functions and the records (``data.records`` or ``data.path``, a JSON-lines file of objects).
"""


def prompt(record) -> str:
    return f"Ask one short question about {record['topic']}."


def reward(texts, topic):
    return [0.0 if t.lower() in text.lower() else -5.0 for text, t in zip(texts, topic)]
