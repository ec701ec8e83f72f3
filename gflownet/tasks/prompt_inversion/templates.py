"""How an input x and a target y are put to the reward model: a *context* rendered from x, then y.

    log p(y | x) = sum of log-probabilities of the tokens of ``joiner + y`` after ``context(x)``

The text ``context(x) + joiner + y`` is tokenised as one string (as a served model tokenises a
prompt it echoes), and y's tokens are those that start at or after the end of the context. Both
reward backends (local and OpenAI-compatible) score the same string with the same rule, so they
give the same log p(y | x) for the same model.

Templates:

* ``raw``: continuation. The context is x itself and y follows after one space:
  ``"The capital of France is" + " Paris."``.
* ``chat``: x is the user's turn, y the assistant's reply (the reward model's chat template).
* ``creative``: x is the subject of a creative-writing request, y the piece written.
* ``code``: x describes a programming task, y the code.

The chat-style templates use the chat template of the reward model's tokenizer (the local model's;
for an API, ``backend.tokenizer``). A tokenizer without one gets ``"User: ...\\nAssistant:"``.

Every context starts with the tokenizer's BOS token (unless it already does, as chat templates
that open with it do): the model reads the text as a served model does, and llama-cpp-python's
server (0.3.36) reports echoed log-probabilities one position late unless the prompt starts with
BOS (it drops a leading BOS from the echo and otherwise not).
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES = {
    "raw": None,
    "chat": "{x}",
    "creative": "Write a short piece of creative writing about the following: {x}",
    "code": "Write code for the following task: {x}",
}


def check_template(name: str) -> None:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt-inversion template {name!r}: use one of {sorted(TEMPLATES)}")


@dataclass(frozen=True)
class Rendered:
    context: str  # what the model reads before y
    continuation: str  # joiner + y: the text whose log-probability is the reward


def render(name: str, x: str, y: str, tokenizer=None) -> Rendered:
    """The context for input ``x`` and the scored continuation for target ``y`` (see module doc)."""
    check_template(name)
    x = x.strip()
    if name == "raw":
        return with_bos(Rendered(x, " " + y.lstrip()), tokenizer)
    message = TEMPLATES[name].format(x=x)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        context = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                                tokenize=False)
        return with_bos(Rendered(context, y), tokenizer)
    return with_bos(Rendered(f"User: {message}\nAssistant:", " " + y.lstrip()), tokenizer)


def with_bos(pair: Rendered, tokenizer) -> Rendered:
    bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else None
    if not bos or pair.context.startswith(bos):
        return pair
    return Rendered(bos + pair.context, pair.continuation)
