"""Training makes the sampler match R/Z on a problem small enough to enumerate (DESIGN.md section 3).

84 sequences (4 words, lengths 1..3, then "?"), fixed random log-rewards; the sampler's exact
distribution is computed by scoring every sequence. `python -m gflownet.toy --plot docs/known_target_l1.png`
draws the curves shown in the README.
"""

import pytest

from gflownet.toy import ToyProblem, train


@pytest.fixture(scope="module")
def problem():
    return ToyProblem(seed=0)


def test_untrained_sampler_is_far_from_the_target(problem):
    from gflownet.toy import tiny_llama

    assert problem.l1(tiny_llama(problem.vocab)) > 1.0
    assert float(problem.model_distribution(tiny_llama(problem.vocab)).sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("loss", ["subtb", "tb"])
def test_training_matches_reward_distribution(problem, loss):
    result = train(loss, steps=800, problem=problem)
    assert result["final_l1"] < 0.1, result["curve"]
    assert result["log_z"] == pytest.approx(float(problem.log_r_tensor().logsumexp(0)), abs=0.1)


def test_broadcast_reward_negative_control_does_not_learn(problem):
    """The original's bug: with the final reward at every position the target is never approached."""
    result = train("subtb_broadcast", steps=800, problem=problem)
    assert min(l1 for _, l1 in result["curve"][1:]) > 0.5, result["curve"]
