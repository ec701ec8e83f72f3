"""The reward's cost on SmolLM2-135M-Instruct: answers per second and the full per-prefix reward
of one step, this project's answerer against plain ``model.generate``, beside a FLOP floor.

    python bench/bench_reward.py                  # 64 answers + per-prefix rewards of 8 questions, 3 rounds
    python bench/bench_reward.py --repeats 5 --questions 32

The questions are real: the untrained SmolLM2 sampler's own questions about edit subjects of
``data/example_edits.jsonl`` (length 5 to 25 tokens, as in training). Answer variants, same
prompts (the configured chat prompt with three examples), same greedy answers:

* ``generate_chunk8``: ``model.generate`` on the full prompts in chunks of 8 (the original's way);
* ``generate_batch``: ``model.generate`` on all prompts in one batch;
* ``ours``: ``gflownet.tasks.contradiction.answerer.Answerer`` (shared prefix once, in-place KV cache, own greedy
  loop, finished rows dropped).

Then one step's full per-prefix reward (``ContradictionReward``: answers for every scored
prefix, the offline judge, the base-model likelihood pass) for 8 questions at ``score_every``
1 and 4, with our answerer and with the chunked ``generate`` one.

Floor: the model FLOPs of the tokens that must be processed (the shared prompt prefix once, each
distinct token prefix of the prompts once, so a question's prefixes add only their own tail, and
the generated tokens; dense layers 2 x parameters per token, the LM head only where logits are
needed, attention over the context), divided by the matmul rate measured in the same round (a
1024 x 1024 x 1024 fp32 GEMM). Variants alternate within each round, and rounds report
medians, because this machine's speed drifts by 20-40% from minute to minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from gflownet.tasks.contradiction.answerer import Answerer  # noqa: E402
from gflownet.core.sampling import encode_prompts  # noqa: E402

REF = "packaged:smollm2-135m-instruct"
ANSWER_VARIANTS = ("generate_chunk8", "generate_batch", "ours")


class GenerateAnswerer(Answerer):
    """Baseline: greedy ``model.generate`` on the full prompts, in chunks (same prompts, same answers)."""

    def __init__(self, *args, chunk: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, questions):
        unique = list(dict.fromkeys(questions))
        tok, out = self.tokenizer, {}
        chunk = self.chunk or max(len(unique), 1)
        for i in range(0, len(unique), chunk):
            part = unique[i : i + chunk]
            ids, mask = encode_prompts(tok, [self.prompt(q) for q in part])
            gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=[tok.eos_token_id, *tok.all_special_ids])
            for q, row in zip(part, gen[:, ids.size(1):]):
                out[q] = tok.decode(row.tolist(), skip_special_tokens=True).split("\n", 1)[0].strip()
        return [out[q] for q in questions]


def matmul_rate(n: int = 1024, reps: int = 10) -> float:
    """fp32 GEMM rate in FLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class FlopModel:
    """Forward FLOPs of a decoder-only LM per processed token."""

    def __init__(self, config, lm_head_params: int):
        self.layers = config.num_hidden_layers
        self.width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.lm_head = lm_head_params

    def dense_params(self, model) -> int:
        emb = model.get_input_embeddings().weight.numel()
        return sum(p.numel() for p in model.parameters()) - emb  # tied LM head counted separately

    def tokens(self, model, n_tokens: float, n_logits: float, mean_context: float) -> float:
        return (2 * self.dense_params(model) * n_tokens + 2 * self.lm_head * n_logits
                + 4 * self.layers * self.width * mean_context * n_tokens)


def answer_floor_flops(fm: FlopModel, model, stats) -> float:
    """The least work any answerer must do: the shared prefix once, every distinct token prefix of
    the questions' prompts once (prompts that extend one another share their common tokens),
    and every generated token but each row's last."""
    n = stats.questions
    own = stats.distinct_tokens
    gen_fwd = max(stats.generated_tokens - n, 0)
    tokens = stats.shared_tokens + own + gen_fwd
    mean_ctx = stats.shared_tokens + (stats.own_tokens + gen_fwd) / max(2 * n, 1)
    return fm.tokens(model, tokens, n + gen_fwd, mean_ctx)


def sample_questions(model, tok, n: int, seed: int = 0):
    """``n`` questions of 5..25 tokens from the untrained sampler, about subjects of the example data."""
    from gflownet.tasks.contradiction.data import load_records
    from gflownet.core.sampling import ActionSpace, forbidden_token_mask, sample, termination_token_id
    from gflownet.tasks.contradiction.task import ContradictionTask

    records = load_records(ROOT / "data" / "example_edits.jsonl")
    term = termination_token_id(tok, "?")
    V = model.get_output_embeddings().weight.size(0)
    space = ActionSpace(term, forbidden_token_mask(tok, V, ["eos", "newline", "termination"], term), 5, 25)
    per = 8
    task = ContradictionTask(prompt_style="chat", prompt_format="subject")  # the prompts these figures were first taken with
    prompts = [task.prompt(r, tok) for r in records[: (n + per - 1) // per] for _ in range(per)][:n]
    ids, mask = encode_prompts(tok, prompts)
    traj = sample(model, ids, mask, space, tok.pad_token_id, generator=torch.Generator().manual_seed(seed))
    return records, prompts, traj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64, help="answers per call in the answer benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from gflownet.tasks.contradiction.judges import FactJudge
    from gflownet.core.modeling import load_causal_lm, load_tokenizer
    from gflownet.core.losses import SubTB
    from gflownet.rewards.combine import WeightedSum
    from gflownet.rewards.likelihood import LikelihoodReward
    from gflownet.tasks.contradiction.reward import ContradictionTerm
    from gflownet.runner import quiet_libraries
    from gflownet.core.sampling import sample_texts

    quiet_libraries()
    torch.manual_seed(0)
    tok = load_tokenizer(REF)
    model = load_causal_lm(REF)
    fm = FlopModel(model.config, model.get_output_embeddings().weight.numel())
    records, prompts, traj = sample_questions(model, tok, args.questions)
    questions = sample_texts(tok, traj.sample_ids, traj.lengths, "?")
    print(f"{len(set(questions))} distinct sampled questions, mean length {traj.lengths.float().mean():.1f} tokens, e.g.:")
    for q in questions[:3]:
        print("   ", q)

    answer_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "reward" / "contradiction.yaml"))["answer"]
    answerers = {  # the offline default's answer settings (prompt, examples, limits) for all three
        "generate_chunk8": GenerateAnswerer(model, tok, chunk=8, **answer_cfg),
        "generate_batch": GenerateAnswerer(model, tok, **answer_cfg),
        "ours": Answerer(model, tok, **answer_cfg),
    }
    results = {}
    for name, a in answerers.items():  # warm-up, and the answers must agree
        results[name] = a(questions)
    for name in ANSWER_VARIANTS[1:]:
        same = sum(x == y for x, y in zip(results[name], results["generate_chunk8"]))
        print(f"{name}: {same}/{len(questions)} answers identical to generate_chunk8")

    # the per-prefix reward of one training step: 8 questions of one record, as the task samples them
    judge_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "reward" / "judge" / "fact.yaml"))
    judge = FactJudge(judge_cfg["weights"], models_dir=ROOT / "models", features_version=judge_cfg["features_version"])
    rec = records[0]
    step_ids, step_len = traj.sample_ids[:8], traj.lengths[:8]
    reward_variants = {}
    for k in (1, 4):
        for name in ("ours", "generate_chunk8"):
            term = ContradictionTerm(answerers[name], judge, tok, min_question_len=5)
            reward_variants[f"reward_k{k}_{name}"] = (k, term, WeightedSum({"contradiction": (1.0, term),
                                                                             "likelihood": (1.0, LikelihoodReward(model, tok))}))

    times: dict[str, list[float]] = {k: [] for k in [*ANSWER_VARIANTS, *reward_variants]}
    floors: dict[str, list[float]] = {k: [] for k in times}
    answer_stats = {}
    reward_stats = {}
    for r in range(args.repeats):
        rate = matmul_rate()
        for name in ANSWER_VARIANTS:
            t0 = time.perf_counter()
            answerers[name](questions)
            times[name].append(time.perf_counter() - t0)
        answer_stats = answerers["ours"].stats
        answer_floor = answer_floor_flops(fm, model, answer_stats) / rate
        for name in ANSWER_VARIANTS:
            floors[name].append(answer_floor)
        p_len = encode_prompts(tok, [prompts[0]])[0].size(1)
        T1 = int(step_len.max()) + 1
        for name, (k, term, reward) in reward_variants.items():
            t0 = time.perf_counter()
            reward(prompts=[prompts[0]] * 8, sample_ids=step_ids, lengths=step_len, step=0,
                   scored=SubTB(score_every=k).scored_states(step_len, 5), edit_fact=[rec.edit_fact] * 8,
                   original_fact=[rec.original_fact] * 8)
            times[name].append(time.perf_counter() - t0)
            if "generate" in name:  # the same prefixes as the ours variant just before: the same floor
                floors[name].append(floors[name.replace("generate_chunk8", "ours")][-1])
            else:  # answers + the likelihood pass (8 rows of prompt and question); the judge is ~1% more
                likelihood = fm.tokens(model, 8 * (p_len + T1), 8 * T1, p_len + T1 / 2)
                floors[name].append((answer_floor_flops(fm, model, term.answerer.stats) + likelihood) / rate)
                reward_stats[name] = term.answerer.stats
        print(f"round {r + 1}: matmul {rate / 1e9:.0f} GFLOP/s, "
              + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in times), flush=True)

    med = {n: statistics.median(v) for n, v in times.items()}
    floor = {n: statistics.median(v) for n, v in floors.items()}
    n_q = len(set(questions))
    print(f"\nAnswers: {n_q} distinct questions, max_new_tokens 24; prompts: {answer_stats.shared_tokens} shared + "
          f"{answer_stats.own_tokens} own tokens ({answer_stats.distinct_tokens} distinct, ours ran "
          f"{answer_stats.computed_tokens}); {answer_stats.generated_tokens} answer tokens")
    print(f"{'variant':<18}{'seconds':>9}{'answers/s':>11}{'vs chunk8':>11}{'vs batch':>10}{'floor s':>9}{'x floor':>9}")
    for n in ANSWER_VARIANTS:
        print(f"{n:<18}{med[n]:>9.2f}{n_q / med[n]:>11.2f}{med['generate_chunk8'] / med[n]:>10.2f}x"
              f"{med['generate_batch'] / med[n]:>9.2f}x{floor[n]:>9.2f}{med[n] / floor[n]:>8.2f}x")
    print("\nPer-prefix reward of one step (8 questions of one record, offline judge, likelihood pass):")
    print(f"{'variant':<30}{'seconds':>9}{'vs generate':>13}{'floor s':>9}{'x floor':>9}")
    for n, st in reward_stats.items():
        print(f"  {n}: {st.questions} prefixes answered; prompt tokens after the shared prefix {st.own_tokens}, "
              f"distinct {st.distinct_tokens}, ours ran {st.computed_tokens}; {st.generated_tokens} answer tokens")
    for n in reward_variants:
        base = n.replace("_ours", "_generate_chunk8")
        print(f"{n:<30}{med[n]:>9.2f}{med[base] / med[n]:>12.2f}x{floor[n]:>9.2f}{med[n] / floor[n]:>8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_s": med, "floor_s": floor, "questions": n_q}, indent=2))


if __name__ == "__main__":
    main()
