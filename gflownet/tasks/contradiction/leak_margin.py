"""A leak reward that needs no judge: the edited answerer's own preference between the two objects.

For a question q about an edit (s, r, o_true -> o_new) the margin is

    m(q) = log P_edited(o_true | A(q)) - log P_edited(o_new | A(q))

with each object teacher-forced (multi-token objects summed, both objects in one batched pass)
after the **answer context** A(q): the answerer's own prompt for q (its instruction and worked
examples, and for ``answerer/edit=in_context`` the stated edit), then the start of its answer, the
edit's relation prompt with the object cut off ("The Eiffel Tower is located in"). The answerer
answers in declarative sentences that restate the relation (its examples teach "The capital of
France is Paris."), so this prefix is how its answer to a question about the fact begins, and the
margin reads which object it would then write, in the context the sampler's question sets. Without
a question it is CounterFact's own paraphrase score (is P(o_true) above P(o_new) after a prompt?),
here applied to questions the sampler writes: m > 0 where the edited model still holds the old fact.

**Relevance guard.** The forced relation prefix makes every question "about" the edit: a question
on anything at all would still get the edit's margin (whatever the prefix alone scores). So a
question must name the edit's subject (``names_subject``: the subject, case-insensitive, or without
a leading article, as ROME finds it in a prompt), and with ``require_question`` also be worded as a
question (``asks``); one that does not earns the fixed ``unrelated_log_reward`` (default -10, the
value of log sigmoid(m / tau) at m / tau = -10: nothing). The component ``names_subject`` is 1
where the whole guard passed.

    log R(q) = log sigmoid(m(q) / tau)      if q names the subject
             = unrelated_log_reward          otherwise
             (+ likelihood_weight * log P_base(q | prompt), the shared likelihood term)

Smooth in m, at most 0, and every scored state is scored the same way (per-prefix scores come with
the teacher-forced pass: SubTB and TB both work). It works with every edit method, since it reads
whatever answerer ``answerer/edit`` builds (none, in_context, rome, lora_ft).
"""

from __future__ import annotations

from os.path import commonprefix  # element-wise: works on token lists
from typing import Any, Sequence

import torch
from torch import Tensor

from gflownet.core.protocols import RewardEnv, RewardOutput
from gflownet.core.sampling import state_text
from gflownet.editing.requests import relation_prompt, subject_span
from gflownet.rewards.combine import WeightedSum
from gflownet.rewards.likelihood import likelihood_reward
from gflownet.tasks.contradiction.answerer import Answerer


def edit_parts(edit_fact: str, original_fact: str, edited_answer: str, original_answer: str) -> tuple[str, str, str]:
    """(relation prompt, original object, new object) of an edit record: the objects are its answers,
    the prompt its edit fact (or else its original fact) without the answer."""
    prompt = relation_prompt(edit_fact, edited_answer) or relation_prompt(original_fact, original_answer)
    old, new = " ".join(str(original_answer).split()), " ".join(str(edited_answer).split())
    if not prompt or not old or not new or old == new:
        raise ValueError(f"the leak-margin reward needs an edit fact that ends with its edited answer and two different "
                         f"answers; got {edit_fact!r} with {edited_answer!r}, and {original_fact!r} with {original_answer!r}")
    return prompt, old, new


def names_subject(question: str, subject: str) -> bool:
    return bool(subject.strip()) and subject_span(question, subject.strip()) is not None


QUESTION_WORDS = {"what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "was", "were",
                  "do", "does", "did", "can", "could", "will", "would", "has", "have", "had", "should", "may", "might"}
PREPOSITIONS = {"in", "on", "at", "from", "for", "to", "with", "by", "of", "into", "under", "during", "since"}


def asks(question: str) -> bool:
    """Whether the text is worded as a question: it opens with a question word or an auxiliary verb
    ("What ...", "Is ...", "Does ..."), or with a preposition and a question word ("In which city
    ..."). The margin reward's trained samplers learnt to write statements instead ("The profession
    of Arun Nehru?", "The profession of X is engineering. Edit your sentence..."), on which the
    forced relation prefix prefers the old object while the answerer's own answer says otherwise.
    With this guard a run asked one CounterFact-style question per edit instead (docs/results.md,
    "Diversity that holds"): it moves the collapse, it does not stop it."""
    words = [w.strip("\"'“”‘’([").lower() for w in question.split()[:2]]
    if not words or not words[0]:
        return False
    if words[0] in QUESTION_WORDS:
        return True
    return words[0] in PREPOSITIONS and len(words) > 1 and words[1] in QUESTION_WORDS


class LeakMarginTerm:
    """``log sigmoid(m / tau)`` per scored state, guarded by ``names_subject`` (module docstring)."""

    def __init__(self, answerer: Answerer, tokenizer, tau: float = 1.0, unrelated_log_reward: float = -10.0,
                 batch_size: int = 64, require_question: bool = False):
        if not float(tau) > 0:
            raise ValueError(f"reward.tau={tau}: the margin is divided by it, use a value > 0")
        self.answerer, self.tokenizer = answerer, tokenizer
        self.require_question = bool(require_question)  # the guard also asks for a question's wording (``asks``)
        self.tau, self.unrelated = float(tau), float(unrelated_log_reward)
        self.batch_size = int(batch_size)

    def contexts(self, question: str, relation: str, fact: str | None) -> str:
        """The answer context A(q): the answerer's prompt for q, then its answer's start."""
        return self.answerer.prompt(self.answerer.turn(question, fact)) + relation

    @torch.no_grad()
    def object_log_probs(self, contexts: Sequence[str], objects: Sequence[str]) -> Tensor:
        """(N,) log P(" " + object | context), its tokens summed, teacher-forced.

        Three shares keep it cheap: every context opens with the answerer's instruction and examples,
        so that shared token prefix runs once per batch and its KV cache serves every row; each
        distinct context's own tokens (question, answer start) run once, for all its objects (pass
        A, whose last position gives each object's first token); then only the objects' further
        tokens run, one row per object, on pass A's cache (pass B)."""
        tok = self.tokenizer
        distinct = list(dict.fromkeys(contexts))
        heads = {c: tok.encode(c, add_special_tokens=False) for c in distinct}
        tails = []  # each object's tokens after its context
        for ctx, obj in zip(contexts, objects):
            full = tok.encode(ctx + " " + obj, add_special_tokens=False)
            head = heads[ctx]
            tails.append(full[len(head):] if full[: len(head)] == head else tok.encode(" " + obj, add_special_tokens=False))
        out = torch.empty(len(tails), dtype=torch.float64)
        if not tails:
            return out
        # the shared prefix stops at least one token before each context's end (whose logits are read)
        P = min(len(commonprefix(list(heads.values()))), min(len(h) for h in heads.values()) - 1)
        model = self.answerer.model
        device = next(model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        was_training = model.training
        model.eval()
        try:
            with self.answerer.model_context():
                for start in range(0, len(distinct), self.batch_size):
                    group = distinct[start:start + self.batch_size]
                    slot = {c: i for i, c in enumerate(group)}
                    rows = [i for i, c in enumerate(contexts) if c in slot]
                    n, W = len(group), max(len(heads[c]) for c in group) - P
                    cache = None
                    if P > 0:
                        cache = model(input_ids=torch.tensor([heads[group[0]][:P]], device=device), use_cache=True,
                                      logits_to_keep=1).past_key_values
                        cache.batch_select_indices(torch.zeros(n, dtype=torch.long, device=device))
                    # pass A: each context's own tokens end at the last column (padding after the shared prefix)
                    ids = torch.full((n, W), pad, dtype=torch.long)
                    mask = torch.zeros(n, P + W, dtype=torch.long)
                    mask[:, :P] = 1
                    positions = torch.zeros(n, W, dtype=torch.long)
                    for i, c in enumerate(group):
                        h = heads[c]
                        ids[i, W - (len(h) - P):] = torch.tensor(h[P:])
                        mask[i, P + W - (len(h) - P):] = 1
                        positions[i, W - (len(h) - P):] = torch.arange(P, len(h))
                    res = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                                past_key_values=cache, use_cache=True, logits_to_keep=1)
                    first = res.logits[:, -1].float().log_softmax(-1).cpu()  # (n, V): each object's first token
                    for r in rows:
                        out[r] = float(first[slot[contexts[r]], tails[r][0]])
                    longer = [r for r in rows if len(tails[r]) > 1]
                    if not longer:
                        continue
                    # pass B: the objects' further tokens, one row per object, on pass A's cache
                    cache = res.past_key_values
                    cache.batch_select_indices(torch.tensor([slot[contexts[r]] for r in longer], device=device))
                    K = max(len(tails[r]) for r in longer) - 1
                    ids_b = torch.full((len(longer), K), pad, dtype=torch.long)
                    mask_b = torch.cat([mask[[slot[contexts[r]] for r in longer]], torch.zeros(len(longer), K, dtype=torch.long)], 1)
                    pos_b = torch.zeros(len(longer), K, dtype=torch.long)
                    for j, r in enumerate(longer):
                        t, h = tails[r], heads[contexts[r]]
                        ids_b[j, : len(t) - 1] = torch.tensor(t[:-1])
                        mask_b[j, P + W : P + W + len(t) - 1] = 1
                        pos_b[j, : len(t) - 1] = torch.arange(len(h), len(h) + len(t) - 1)
                    lp = model(input_ids=ids_b.to(device), attention_mask=mask_b.to(device), position_ids=pos_b.to(device),
                               past_key_values=cache, use_cache=True).logits.float().log_softmax(-1).cpu()
                    for j, r in enumerate(longer):
                        t = tails[r]
                        out[r] += float(lp[j, torch.arange(len(t) - 1), torch.tensor(t[1:])].double().sum())
        finally:
            model.train(was_training)
        return out

    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 edit_fact: Sequence[str], original_fact: Sequence[str], subject: Sequence[str],
                 edited_answer: Sequence[str], original_answer: Sequence[str], **context: Any) -> RewardOutput:
        B, T1 = scored.shape
        if not (len(edit_fact) == len(original_fact) == len(subject) == len(edited_answer) == len(original_answer) == B):
            raise ValueError("the leak-margin reward needs one edit fact, original fact, subject and pair of answers per "
                             "trajectory")
        sample_ids, lengths, scored = sample_ids.cpu()[:, :T1], lengths.cpu(), scored.cpu()
        where = scored.nonzero().tolist()
        texts = [state_text(self.tokenizer, sample_ids[b, :t].tolist(), "?") for b, t in where]
        parts = [edit_parts(edit_fact[b], original_fact[b], edited_answer[b], original_answer[b]) for b in range(B)]
        ctxs = [self.contexts(q, parts[b][0], edit_fact[b]) for q, (b, _) in zip(texts, where)]
        both = self.object_log_probs(ctxs + ctxs, [parts[b][1] for b, _ in where] + [parts[b][2] for b, _ in where])
        n = len(where)
        margin = torch.full((B, T1), float("nan"), dtype=torch.float64)
        named = torch.zeros(B, T1, dtype=torch.bool)
        for k, ((b, t), q) in enumerate(zip(where, texts)):
            margin[b, t] = both[k] - both[n + k]
            named[b, t] = names_subject(q, subject[b]) and (not self.require_question or asks(q))
        leak = torch.nn.functional.logsigmoid(margin / self.tau)
        log_r = torch.where(named, leak, torch.full_like(leak, self.unrelated))
        log_r = torch.where(scored, log_r, torch.zeros_like(log_r)).float()
        idx = torch.arange(B)
        return RewardOutput(
            log_r=log_r,
            components={"leak_margin": margin[idx, lengths].float(), "names_subject": named[idx, lengths].float()},
            per_state={"leak_margin": margin.float()},
        )


def leak_margin_reward(env: RewardEnv, answer: dict, answerer: dict | None = None, edit: dict | None = None,
                       likelihood_weight: float = 1.0, tau: float = 1.0, unrelated_log_reward: float = -10.0,
                       batch_size: int = 64, require_question: bool = False, took_only: bool = False,
                       failed_log_reward: float | None = None) -> WeightedSum:
    """Factory (rank 0 only): the guarded margin term plus ``likelihood_weight`` x the base LM's
    log-likelihood of the question. The answerer is the contradiction reward's (``answerer/edit``).
    ``took_only``: the margin term pays only on edits that took (``leaks.TookGate``); elsewhere every
    question earns ``failed_log_reward`` (default ``unrelated_log_reward``)."""
    from gflownet.tasks.contradiction.reward import build_answerer, check_took_only, gate_took

    if took_only:
        check_took_only(edit)  # before the answerer is built and edited
    term = LeakMarginTerm(build_answerer(env, dict(answerer or {}), dict(answer), edit), env.tokenizer, tau=tau,
                          unrelated_log_reward=unrelated_log_reward, batch_size=batch_size,
                          require_question=require_question)
    if took_only:
        term = gate_took(term, term.answerer, edit, unrelated_log_reward if failed_log_reward is None else failed_log_reward)
    return WeightedSum({"leak": (1.0, term), "likelihood": (float(likelihood_weight), likelihood_reward(env))})
