"""A GFlowNet problem small enough to enumerate, to prove that training matches R(x)/Z.

Vocabulary (``toy_tokenizer``): ``<pad>`` 0, ``<s>`` 1 (the prompt; it must not be the padding id,
whose embedding Llama keeps at zero), the words ``w1 .. w{n_words}``, then ``?`` (termination).
A sample is ``min_len..max_len`` words then ``?``; every such sequence has a fixed random
log-reward, so the whole target distribution ``R(x)/Z`` is known, and the sampler's exact
distribution is computed by scoring every sequence (``LMGFlowNet.sequence_log_prob``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

WORD = "w{}"


def toy_tokenizer(n_words: int):
    """A word-level tokenizer: ``<pad>``, ``<s>``, ``w1..wN``, ``?`` (ids 0, 1, 2..N+1, N+2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, **{WORD.format(i + 1): i + 2 for i in range(n_words)}, "?": n_words + 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>")


def build_toy_llama(dest: Path, n_words: int = 4, seed: int = 0, init_std: float = 0.02) -> None:
    """A 2-layer, 32-wide Llama over the toy vocabulary (fixed seed), saved with its tokenizer.
    ``init_std``: the weights' initial scale (Llama's 0.02 gives near-uniform next-word
    distributions; larger gives a model with strong preferences, a reward model for toy problems)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = n_words + 3
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=16, initializer_range=init_std, bos_token_id=1, eos_token_id=vocab - 1, pad_token_id=0,
        ))
    model.save_pretrained(dest)
    toy_tokenizer(n_words).save_pretrained(dest)
    (dest / "toy.json").write_text(json.dumps({"n_words": n_words, "seed": seed, "init_std": init_std}))


@dataclass
class ToyProblem:
    n_words: int = 4
    min_len: int = 1
    max_len: int = 3
    reward_scale: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"toy problem: need 1 <= min_len <= max_len, got {self.min_len} and {self.max_len}")
        self.term = self.n_words + 2
        words = range(2, self.n_words + 2)
        self.sequences = [seq for L in range(self.min_len, self.max_len + 1) for seq in itertools.product(words, repeat=L)]
        g = torch.Generator().manual_seed(self.seed)
        log_r = torch.randn(len(self.sequences), generator=g, dtype=torch.float64) * self.reward_scale
        self.log_r = {seq: float(v) for seq, v in zip(self.sequences, log_r)}
        self.target = (log_r - torch.logsumexp(log_r, 0)).exp()  # R(x) / Z, in self.sequences order

    def log_r_tensor(self) -> torch.Tensor:
        return torch.tensor([self.log_r[s] for s in self.sequences], dtype=torch.float64)

    @property
    def log_z(self) -> float:
        return float(self.log_r_tensor().logsumexp(0))

    def batch_of_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sequence as (N, max_len+1) ids ending in the termination token, and lengths."""
        ids = torch.zeros(len(self.sequences), self.max_len + 1, dtype=torch.long)
        for i, seq in enumerate(self.sequences):
            ids[i, : len(seq)] = torch.tensor(seq)
            ids[i, len(seq)] = self.term
        return ids, torch.tensor([len(s) for s in self.sequences])

    def l1(self, log_probs: torch.Tensor) -> float:
        """L1 distance between a distribution given as log-probabilities in ``sequences`` order and R/Z."""
        return float((log_probs.double().exp().cpu() - self.target).abs().sum())
