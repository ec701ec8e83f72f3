"""The frozen answerer: one short declarative answer per question, greedy, batched, fast.

Every answer prompt of a step starts with the same text (the few-shot examples, or the chat
template's system turn), so that shared token prefix is run through the model once and its KV
cache copied to every row; only each question's own tokens are computed per row. Decoding is a
plain greedy loop with the cache: logits only at the last position, a row leaves the batch
when it emits an end token or a token containing a line break, and repeated questions are
answered once. The result equals greedy ``model.generate`` on the full prompts (tested), at a
fraction of the cost (``bench/bench_reward.py``).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from os.path import commonprefix  # element-wise: works on token lists
from typing import Sequence

import torch
from torch import Tensor

from gflownet.core.kv_cache import reserved_cache
from gflownet.core.sampling import forbidden_token_mask, last_position

log = logging.getLogger(__name__)

INSTRUCTION = "Answer each question with one short declarative sentence."
EXAMPLES = (
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Which company makes the iPhone?", "The iPhone is made by Apple."),
)


@dataclass
class AnswerStats:
    """What the last call processed, for benchmarks and logs (token counts, not time)."""

    questions: int = 0  # distinct questions answered
    shared_tokens: int = 0  # prompt tokens common to every question, computed once
    own_tokens: int = 0  # prompt tokens after the shared prefix, summed over questions
    generated_tokens: int = 0  # answer tokens produced, summed over questions (stop token included)
    computed_tokens: int = 0  # prompt tokens actually run after the shared prefix (sharing between questions)
    distinct_tokens: int = 0  # distinct token prefixes after the shared prefix: the least any sharing can run


def _accepts_system_turn(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system turn (Gemma's raises instead)."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except Exception as err:  # jinja2's TemplateError from the template's raise_exception
        log.info("the chat template refuses a system turn (%s): the instruction opens the first user turn", err)
        return False
    return True


class Answerer:
    """Greedy short answers from a frozen LM, prompted with an instruction and worked examples.

    ``style``: ``chat`` renders the instruction as the system turn and each example as a
    user/assistant exchange through the tokenizer's chat template; ``few_shot`` writes them as
    plain ``Question: ... / Answer: ...`` text; ``auto`` picks ``chat`` when the tokenizer has
    a template. (On SmolLM2-135M-Instruct the chat form with examples gives short declarative
    answers; without examples its chat answers ramble to the token limit.) With
    ``disable_adapters`` the model is a PEFT sampler whose base weights serve as the answerer
    (adapters off during the call). ``batch_size`` bounds the rows decoded together (memory),
    not the work shared.
    """

    def __init__(self, model, tokenizer, style: str = "auto", max_new_tokens: int = 24, batch_size: int = 64,
                 disable_adapters: bool = False, instruction: str = INSTRUCTION,
                 examples: Sequence[Sequence[str]] = EXAMPLES, fact_template: str | None = None):
        if style == "auto":
            style = "chat" if tokenizer.chat_template else "few_shot"
        if style not in {"chat", "few_shot"}:
            raise ValueError(f"unknown answer style {style!r}: use auto, chat or few_shot")
        if style == "chat" and not tokenizer.chat_template:
            raise ValueError("answer style 'chat' needs a tokenizer with a chat template: use style=few_shot")
        if any(len(e) != 2 or not all(isinstance(x, str) and x.strip() for x in e) for e in examples):
            raise ValueError(f"reward.answer.examples must be [question, answer] pairs of non-empty text, got {examples!r}")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"answer max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
        self.model, self.tokenizer, self.style = model, tokenizer, style
        self.instruction, self.examples = instruction, [tuple(e) for e in examples]
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.disable_adapters = disable_adapters
        if fact_template is not None and ("{fact}" not in fact_template or "{question}" not in fact_template):
            raise ValueError(f"answerer.edit.template must contain {{fact}} and {{question}}, got {fact_template!r}")
        self.fact_template = fact_template
        self.stats = AnswerStats()
        self._stop: Tensor | None = None
        # Some chat templates (Gemma's) refuse a system turn: the instruction then opens the first user turn.
        self.system_turn = style == "chat" and bool(instruction) and _accepts_system_turn(tokenizer)

    def turn(self, question: str, fact: str | None = None) -> str:
        """The question as the answerer is asked it: with ``fact_template`` (in-context editing) the
        edit fact is stated first."""
        if self.fact_template is None:
            return question
        if not fact:
            raise ValueError("this answerer states the edit in its prompt (answerer/edit=in_context): pass the edit facts")
        return self.fact_template.format(fact=fact, question=question)

    def prompt(self, question: str) -> str:
        if self.style == "chat":
            messages = [{"role": "system", "content": self.instruction}] if self.system_turn else []
            for q, a in self.examples:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": question})
            if self.instruction and not self.system_turn:
                first = messages[0]
                messages[0] = {"role": "user", "content": f"{self.instruction}\n\n{first['content']}"}
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        head = f"{self.instruction}\n" if self.instruction else ""
        shots = "".join(f"Question: {q}\nAnswer: {a}\n" for q, a in self.examples)
        return f"{head}{shots}Question: {question}\nAnswer:"

    def encode(self, question: str) -> list[int]:
        return self.tokenizer.encode(self.prompt(question), add_special_tokens=False)

    def stop_mask(self, vocab_size: int) -> Tensor:
        """(V,) bool: every special token (end of sequence included) and tokens containing a line break."""
        if self._stop is None or self._stop.numel() != vocab_size:
            self._stop = forbidden_token_mask(self.tokenizer, vocab_size, ["eos", "newline"])
        return self._stop

    def model_context(self):
        """The context in which ``self.model`` is the answerer: a shared sampler with its adapters off."""
        return self.model.disable_adapter() if self.disable_adapters else nullcontext()

    def __call__(self, questions: Sequence[str], facts: Sequence[str] | None = None) -> list[str]:
        """Greedy answers; ``facts`` (one per question) are used when the answerer states the edit.
        Each distinct question (as asked: with its fact) is answered once."""
        if facts is not None and len(facts) != len(questions):
            raise ValueError(f"{len(facts)} facts for {len(questions)} questions")
        questions = [self.turn(q, None if facts is None else facts[i]) for i, q in enumerate(questions)]
        unique = list(dict.fromkeys(questions))
        self.stats = AnswerStats(questions=len(unique))
        answers = self._answer(unique) if unique else {}
        return [answers[q] for q in questions]

    @torch.no_grad()
    def _answer(self, unique: list[str]) -> dict[str, str]:
        """The answer to each of the distinct questions, decoded here (the shared prompt prefix once)."""
        encoded = [self.encode(q) for q in unique]
        shared = _common_prefix(encoded)
        self.stats.shared_tokens = shared
        self.stats.own_tokens = sum(len(e) - shared for e in encoded)
        self.stats.distinct_tokens = len({tuple(e[shared : i + 1]) for e in encoded for i in range(shared, len(e))})
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        answers: dict[str, str] = {}
        try:
            with self.model_context():
                prefix = None
                if shared:
                    prefix = self.model(input_ids=torch.tensor([encoded[0][:shared]], device=device), use_cache=True,
                                        logits_to_keep=1).past_key_values
                # token order: questions that extend one another land in the same chunk
                order = sorted(range(len(unique)), key=lambda i: encoded[i][shared:])
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    outs = self._decode(prefix, shared, [encoded[i][shared:] for i in chunk], device)
                    for i, ids in zip(chunk, outs):
                        answers[unique[i]] = self._text(ids)
        finally:
            self.model.train(was_training)
        return answers

    def _text(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text.split("\n", 1)[0].strip()

    def _decode(self, prefix_cache, P: int, suffixes: list[list[int]], device) -> list[list[int]]:
        """Greedy answers for rows that continue the shared prefix with their own tokens.

        Rows whose tokens start with another row's (the prefixes of one sampled question, in
        per-prefix rewards) reuse that "host" row's keys and values: pass A runs each host's
        tokens but its last, each guest then sees the first ``cut`` of its host's positions
        (attention mask) and pass B runs only what follows (a host: its last token). Then the
        greedy loop, one token per live row. ``cheapest_plan`` picks which rows become guests so
        that the padded work of the two passes is least.
        """
        N = len(suffixes)
        host_of, cut = cheapest_plan(suffixes)
        hosts = list(dict.fromkeys(host_of))
        slot = {h: i for i, h in enumerate(hosts)}
        a_len = [len(suffixes[h]) - 1 for h in hosts]
        W = max(a_len)
        rest = [suffixes[r][cut[r]:] for r in range(N)]
        W2 = max(len(x) for x in rest)
        self.stats.computed_tokens += sum(a_len) + sum(len(x) for x in rest)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        cache = reserved_cache(prefix_cache, len(hosts), P + W + W2 + self.max_new_tokens)
        mask_a = torch.zeros(N, W, dtype=torch.long)
        if W:
            ids = torch.full((len(hosts), W), pad, dtype=torch.long)
            host_mask = torch.zeros(len(hosts), W, dtype=torch.long)
            for i, h in enumerate(hosts):  # left-padded
                ids[i, W - a_len[i]:] = torch.tensor(suffixes[h][:-1], dtype=torch.long)
                host_mask[i, W - a_len[i]:] = 1
            attn = torch.cat([torch.ones(len(hosts), P, dtype=torch.long), host_mask], dim=1).to(device)
            pos = (P + (host_mask.cumsum(1) - 1).clamp(min=0)).to(device)
            self.model(input_ids=ids.to(device), attention_mask=attn, position_ids=pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=last_position(W, device))
            for r in range(N):  # each row sees the first cut[r] real positions of its host
                start = W - a_len[slot[host_of[r]]]
                mask_a[r, start : start + cut[r]] = 1
        if len(hosts) != N or hosts != list(range(N)):
            cache.batch_select_indices(torch.tensor([slot[host_of[r]] for r in range(N)], device=device))
        ids = torch.full((N, W2), pad, dtype=torch.long)
        mask_b = torch.zeros(N, W2, dtype=torch.long)
        for r, x in enumerate(rest):
            ids[r, W2 - len(x):] = torch.tensor(x, dtype=torch.long)
            mask_b[r, W2 - len(x):] = 1
        pos = P + torch.tensor(cut)[:, None] + (mask_b.cumsum(1) - 1).clamp(min=0)
        attn = torch.cat([torch.ones(N, P, dtype=torch.long), mask_a, mask_b], dim=1).to(device)
        pos = pos.to(device)
        out = self.model(input_ids=ids.to(device), attention_mask=attn, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=last_position(W2, device))
        logits, cache = out.logits[:, -1], out.past_key_values
        stop = self.stop_mask(logits.size(-1)).to(device)
        rows = torch.arange(N, device=device)  # original row of each live row
        next_pos = pos[:, -1] + 1
        produced: list[list[int]] = [[] for _ in range(N)]
        for step in range(self.max_new_tokens):
            tok = logits.argmax(-1)
            for r, t in zip(rows.tolist(), tok.tolist()):
                produced[r].append(t)
            self.stats.generated_tokens += len(tok)
            live = ~stop[tok]
            if step == self.max_new_tokens - 1 or not live.any():
                break
            if not live.all():  # finished rows leave the batch (and the cache)
                keep = live.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, attn.new_ones(attn.size(0), 1)], dim=1)
            out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True)
            logits, cache = out.logits[:, -1], out.past_key_values
            next_pos = next_pos + 1
        return produced


class ServedAnswerer(Answerer):
    """The same answerer behind an OpenAI-compatible ``/v1/completions`` endpoint (vLLM, llama.cpp's
    server, a hosted API) instead of a local model: the same prompt text (instruction, examples, chat
    template, an in-context edit's fact), greedy (temperature 0), cut at the first line break, at
    most ``max_new_tokens`` tokens. ``backend`` is the prompt-inversion client
    (``OpenAIBackend``, optionally behind its SQLite ``CachedBackend``): bounded concurrency, retries
    with backoff on 429, 5xx and time-outs, and an error that names the fix when it gives up.

    No local weights: what reads the answerer's probabilities (``reward=leak_margin``, the
    answer-quality term, edit-quality scores) needs the local answerer."""

    def __init__(self, backend, tokenizer, **answer):
        answer.pop("batch_size", None)  # the server batches its own requests
        super().__init__(None, tokenizer, **answer)
        self.backend = backend

    def model_context(self):
        raise RuntimeError("a served answerer has no local weights: this needs a local answerer (drop reward.served)")

    def _answer(self, unique: list[str]) -> dict[str, str]:
        texts = self.backend.complete([self.prompt(q) for q in unique], self.max_new_tokens, stop=["\n"])
        return {q: text.split("\n", 1)[0].strip() for q, text in zip(unique, texts)}


def _plan_hosts(seqs: list[list[int]], max_rest: int | None) -> tuple[list[int], list[int]]:
    """For each sequence, the host whose computed tokens it reuses (itself for a host) and how many.

    Longest first; a sequence whose tokens after its longest common prefix with an earlier host
    (at most its own length - 1 and the host's - 1) number at most ``max_rest`` becomes that
    host's guest (``max_rest=None``: no guests). A host's ``cut`` is its length - 1: everything
    but its last token runs in pass A.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    host_of, cut = [0] * len(seqs), [0] * len(seqs)
    hosts: list[int] = []
    for r in order:
        s = seqs[r]
        best, best_h = 0, -1
        if max_rest is not None:
            for h in hosts:
                k = min(len(commonprefix([s, seqs[h]])), len(s) - 1, len(seqs[h]) - 1)
                if k > best:
                    best, best_h = k, h
        if best_h >= 0 and len(s) - best <= max_rest:
            host_of[r], cut[r] = best_h, best
        else:
            hosts.append(r)
            host_of[r], cut[r] = r, len(s) - 1
    return host_of, cut


def plan_cost(seqs: list[list[int]], host_of: list[int], cut: list[int]) -> int:
    """Token slots the two passes run, padding included: hosts x widest pass A + rows x widest pass B."""
    hosts = set(host_of)
    return len(hosts) * max(len(seqs[h]) - 1 for h in hosts) + len(seqs) * max(len(s) - c for s, c in zip(seqs, cut))


def cheapest_plan(seqs: list[list[int]]) -> tuple[list[int], list[int]]:
    """The hosting plan with the fewest padded token slots: sharing pays only when the guests'
    own remainders are short, since every row of pass B is padded to the longest remainder."""
    plans = [_plan_hosts(seqs, m) for m in (None, 2, 4, 8, 12, 16, 24, 32)]
    return min(plans, key=lambda plan: plan_cost(seqs, *plan))


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of all sequences, leaving every sequence at least one own token."""
    return max(min(len(commonprefix(seqs)), min(len(s) for s in seqs) - 1), 0)
