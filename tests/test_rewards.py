import math

import pytest
import torch

from trl_powerflow.baselines import (
    REWARD_FUNCS,
    EntropyMinimisationReward,
    SelfCertaintyReward,
    accuracy_reward,
    boxed_format_reward,
    get_reward_funcs,
    group_slices,
    majority_vote_reward,
    make_majority_vote_reward,
    make_semantic_entropy_reward,
    negative_entropy,
    self_certainty,
    semantic_entropy,
    semantic_entropy_reward,
    set_reward_model,
)
from trl_powerflow.data import answers_equivalent, extract_answer, extract_boxed, majority_answer, prompt_token_ids


def boxed(x):
    return f"The answer is \\boxed{{{x}}}."


def chat(text):
    return [{"role": "assistant", "content": text}]


# --------------------------------------------------------------------------------------------------------------
# extraction / equivalence
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ {a}^{ {b} } }", "{a}^{ {b} }"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("no box here", None),
        ("", None),
        (None, None),
        ("\\boxed{}", ""),
        ("\\boxed{3} and a truncated \\boxed{4", "3"),
        ("only truncated \\boxed{\\frac{1}{2}", None),
        ("\\fbox{7}", "7"),
        ("\\boxed 5.", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_answer_empty_box_and_messages():
    assert extract_answer("Put the final answer in \\boxed{}.") is None
    assert extract_answer(chat(boxed(3))) == "3"
    assert extract_answer([{"role": "assistant", "content": [{"type": "text", "text": boxed(4)}]}]) == "4"
    assert extract_answer(chat("")) is None
    assert extract_answer([]) is None


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("1/2", "\\frac12", True),
        ("12", "12.0", True),
        (" 7 ", "7", True),
        ("2", "3", False),
        ("x+1", "1+x", True),
        ("listen", "silent", False),
        ("Yes", "yes", True),
        (None, "1", False),
        (None, None, False),
    ],
)
def test_answers_equivalent(a, b, expected):
    assert answers_equivalent(a, b) is expected


# --------------------------------------------------------------------------------------------------------------
# accuracy and format
# --------------------------------------------------------------------------------------------------------------


def test_accuracy_reward_plain_and_conversational():
    completions = [boxed("\\frac{1}{2}"), boxed(3), "no answer", "", boxed("0.50")]
    answers = ["0.5", "4", "4", "4", "\\boxed{\\frac{1}{2}}"]
    expected = [1.0, 0.0, 0.0, 0.0, 1.0]
    assert accuracy_reward(["q"] * 5, completions, answer=answers) == expected
    conversational = [chat(c) for c in completions]
    assert accuracy_reward([[{"role": "user", "content": "q"}]] * 5, conversational, answer=answers) == expected


def test_accuracy_reward_integer_reference_and_errors():
    assert accuracy_reward(["q"], [boxed(76)], answer=[76]) == [1.0]
    with pytest.raises(ValueError, match="answer"):
        accuracy_reward(["q"], [boxed(1)])
    with pytest.raises(ValueError):
        accuracy_reward(["q", "q"], [boxed(1)] * 2, answer=["1"])


def test_boxed_format_reward():
    completions = [boxed(1), "nothing", "", "\\boxed{}", chat(boxed(2)), chat("no")]
    assert boxed_format_reward(None, completions) == [0.0, -0.5, -0.5, -0.5, 0.0, -0.5]


# --------------------------------------------------------------------------------------------------------------
# TTRL majority vote
# --------------------------------------------------------------------------------------------------------------


def test_group_slices():
    assert group_slices(["a", "a", "b", "b", "b", "a"]) == [slice(0, 2), slice(2, 5), slice(5, 6)]
    assert group_slices(["a"] * 4, num_generations=2) == [slice(0, 2), slice(2, 4)]
    assert group_slices([]) == []
    with pytest.raises(ValueError, match="num_generations"):
        group_slices(["a"] * 3, num_generations=2)


def test_majority_vote_basic_and_no_answer():
    completions = [boxed(2), boxed(3), boxed(3), "none"]
    assert majority_vote_reward(["p"] * 4, completions) == [0.0, 1.0, 1.0, 0.0]


def test_majority_vote_tie_goes_to_earliest_first_appearance():
    completions = [boxed(3), boxed(2), boxed(2), boxed(3)]
    assert majority_vote_reward(["p"] * 4, completions) == [1.0, 0.0, 0.0, 1.0]
    assert majority_answer(["2", "3", None, "3", "2"]) == "2"
    assert majority_answer([None, None]) is None


def test_majority_vote_uses_math_equivalence():
    completions = [boxed(1), boxed("\\frac{1}{2}"), boxed("0.5"), boxed(1), boxed("1/2")]
    assert majority_vote_reward(["p"] * 5, completions) == [0.0, 1.0, 1.0, 0.0, 1.0]


def test_majority_vote_group_without_answers_and_empty_completion():
    assert majority_vote_reward(["p"] * 3, ["", "nothing", "\\boxed{}"]) == [0.0, 0.0, 0.0]


def test_majority_vote_groups_by_runs_of_prompts_conversational():
    p1 = [{"role": "user", "content": "one"}]
    p2 = [{"role": "user", "content": "two"}]
    prompts = [p1, p1, p1, p2, p2, p2]
    completions = [chat(boxed(x)) for x in (1, 1, 2, 5, 6, 6)]
    assert majority_vote_reward(prompts, completions) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_make_majority_vote_reward_fixed_groups():
    reward = make_majority_vote_reward(num_generations=2)
    assert reward.__name__ == "majority_vote_reward"
    # Same prompt, but fixed groups of two: [1, 2] is a tie (1 first), [2, 2] agrees.
    assert reward(["p"] * 4, [boxed(1), boxed(2), boxed(2), boxed(2)]) == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="num_generations"):
        reward(["p"] * 3, [boxed(1)] * 3)


# --------------------------------------------------------------------------------------------------------------
# EMPO semantic entropy
# --------------------------------------------------------------------------------------------------------------


def test_semantic_entropy_reward():
    completions = [boxed(2), boxed("2.0"), boxed(3), "no answer"]
    assert semantic_entropy_reward(["p"] * 4, completions) == [0.5, 0.5, 0.25, 0.0]
    assert semantic_entropy_reward(["p"] * 2, ["", "x"]) == [0.0, 0.0]


def test_semantic_entropy_reward_two_groups_and_factory():
    prompts = ["a", "a", "b", "b", "b"]
    completions = [boxed(1), boxed(2), boxed(7), boxed(7), boxed(7)]
    assert semantic_entropy_reward(prompts, completions) == [0.5, 0.5, 1.0, 1.0, 1.0]
    reward = make_semantic_entropy_reward(2)
    assert reward(["p"] * 4, [boxed(1), boxed(1), boxed(1), boxed(2)]) == [1.0, 1.0, 0.5, 0.5]


def test_semantic_entropy_value():
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert semantic_entropy(["2", "\\frac{4}{2}", "3", None]) == pytest.approx(expected)
    assert semantic_entropy(["1", "1.0"]) == 0.0
    assert semantic_entropy([None, None]) == 0.0
    assert semantic_entropy([]) == 0.0
    assert semantic_entropy(["1", "2", "3", "4"]) == pytest.approx(math.log(4))


# --------------------------------------------------------------------------------------------------------------
# self-certainty / entropy (pure functions)
# --------------------------------------------------------------------------------------------------------------


def test_uniform_logits():
    vocab = 7
    logits = torch.zeros(2, 3, vocab)
    mask = torch.ones(2, 3)
    assert torch.allclose(self_certainty(logits, mask), torch.zeros(2), atol=1e-6)
    assert torch.allclose(negative_entropy(logits, mask), torch.full((2,), -math.log(vocab)), atol=1e-6)


def test_hand_computed_two_token_vocab():
    p = torch.tensor([0.75, 0.25])
    logits = torch.stack([p.log(), torch.tensor([5.0, -5.0])]).unsqueeze(0)  # (1, 2, 2); token 2 is masked out
    mask = torch.tensor([[1, 0]])
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert self_certainty(logits, mask).item() == pytest.approx(kl, rel=1e-5)
    assert negative_entropy(logits, mask).item() == pytest.approx(-entropy, rel=1e-5)
    # Without a mask both tokens count; a near-deterministic token approaches KL = log(V) - ... and H = 0.
    both = self_certainty(logits).item()
    q = torch.softmax(torch.tensor([5.0, -5.0]), -1)
    kl2 = float(-math.log(2) - q.log().mean())
    assert both == pytest.approx((kl + kl2) / 2, rel=1e-5)


def test_empty_mask_gives_zero_and_no_batch_dim():
    logits = torch.randn(4, 5)
    assert self_certainty(logits, torch.zeros(4)).item() == 0.0
    assert negative_entropy(logits, torch.zeros(4)).item() == 0.0
    assert self_certainty(logits).ndim == 0
    assert self_certainty(torch.randn(3, 5)).item() >= 0.0


# --------------------------------------------------------------------------------------------------------------
# model-based rewards on the tiny model
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


def _reference_scores(model, tokenizer, prompts, completion_ids, fn):
    scores = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completion_ids):
            prompt_ids = prompt_token_ids(tokenizer, prompt)
            ids = torch.tensor([prompt_ids + completion])
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
            scores.append(fn(logits, torch.ones(len(completion))).item())
    return scores


@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize(
    "cls, fn", [(SelfCertaintyReward, self_certainty), (EntropyMinimisationReward, negative_entropy)]
)
def test_model_reward_matches_unpadded_computation(tiny, conversational, cls, fn):
    model, tokenizer = tiny
    texts = ["What is 1 + 2?", "Hello! How can I help you today? Please think step by step.", "Hi"]
    prompts = [[{"role": "user", "content": t}] for t in texts] if conversational else texts
    completions_text = ["The answer is \\boxed{3}.", "Sure", "It was a bright cold day in April."]
    completion_ids = [
        tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions_text
    ]
    completions = [chat(c) for c in completions_text] if conversational else completions_text

    reward = cls(tokenizer, batch_size=2)
    assert reward.__name__ in ("self_certainty", "entropy_minimisation")
    with pytest.raises(RuntimeError, match="trainer.model"):
        reward(prompts, completions, completion_ids=completion_ids)
    set_reward_model([reward], model)
    model.train()
    scores = reward(prompts, completions, completion_ids=completion_ids)
    assert model.training  # mode restored
    model.eval()
    expected = _reference_scores(model, tokenizer, prompts, completion_ids, fn)
    assert scores == pytest.approx(expected, abs=1e-4)
    if cls is SelfCertaintyReward:
        assert all(s > 0 for s in scores)
    else:
        assert all(-math.log(len(tokenizer)) - 1e-4 <= s < 0 for s in scores)


def test_model_reward_without_completion_ids_and_empty_completion(tiny):
    model, tokenizer = tiny
    reward = SelfCertaintyReward(tokenizer, model=model)
    prompts = ["What is 2 + 2?", "What is 2 + 2?"]
    scores = reward(prompts, ["The answer is 4", ""])
    assert scores[0] > 0 and scores[1] is None
    expected = _reference_scores(
        model,
        tokenizer,
        prompts[:1],
        [tokenizer("The answer is 4", add_special_tokens=False)["input_ids"]],
        self_certainty,
    )
    assert scores[0] == pytest.approx(expected[0], abs=1e-4)
    with pytest.raises(ValueError):
        SelfCertaintyReward(tokenizer, temperature=0)


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------


def test_registry_and_get_reward_funcs(tiny):
    _, tokenizer = tiny
    assert set(REWARD_FUNCS) == {
        "accuracy",
        "boxed_format",
        "majority_vote",
        "semantic_entropy",
        "self_certainty",
        "entropy_minimisation",
    }
    funcs = get_reward_funcs(["accuracy", "majority_vote", "self_certainty"], tokenizer=tokenizer)
    assert funcs[0] is accuracy_reward and funcs[1] is majority_vote_reward
    assert isinstance(funcs[2], SelfCertaintyReward) and funcs[2].model is None
    assert get_reward_funcs("boxed_format") == [boxed_format_reward]
    assert get_reward_funcs(["trl_powerflow.baselines:semantic_entropy_reward"]) == [semantic_entropy_reward]
    (imported,) = get_reward_funcs(["trl_powerflow.baselines:EntropyMinimisationReward"], tokenizer=tokenizer)
    assert isinstance(imported, EntropyMinimisationReward)


def test_registry_errors():
    with pytest.raises(ValueError, match="Allowed names.*accuracy.*majority_vote"):
        get_reward_funcs(["nope"])
    with pytest.raises(ValueError, match="tokenizer"):
        get_reward_funcs(["self_certainty"])
    with pytest.raises(ValueError, match="Cannot import"):
        get_reward_funcs(["no_such_module_xyz:func"])
    with pytest.raises(ValueError, match="no attribute"):
        get_reward_funcs(["trl_powerflow.baselines:nope"])
    with pytest.raises(ValueError, match="not callable"):
        get_reward_funcs(["trl_powerflow.baselines:REWARD_FUNCS.keys.__doc__"])
