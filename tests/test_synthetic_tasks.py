import random

import pytest

from trl_powerflow.baselines import accuracy_reward
from trl_powerflow.data import extract_answer
from trl_powerflow.experiments import synthetic_tasks as st

# ------------------------------------------------------------------------------------------------ digit chain


def test_chain_answer_by_hand():
    assert st.chain_answer(3, [("+", 4), ("+", 8), ("-", 5)]) == 0  # 7, 15 -> 5, 0
    assert st.chain_answer(0, [("-", 1)]) == 9
    assert st.chain_answer(9, [("+", 9), ("+", 9)]) == 7  # 18 -> 8, 17 -> 7
    assert st.chain_answer(5, []) == 5
    with pytest.raises(ValueError):
        st.chain_answer(1, [("*", 2)])


def test_chain_prompt_round_trip():
    text = st.chain_prompt(3, [("+", 4), ("+", 8), ("-", 5)])
    assert text == "Compute 3+4+8-5 mod 10. Put the final answer in \\boxed{}."
    assert st.parse_chain_prompt(text) == (3, (("+", 4), ("+", 8), ("-", 5)))
    assert st.parse_chain_prompt("hello") is None


def test_clean_solution_is_right_and_verified():
    rng = random.Random(0)
    ops = (("+", 4), ("+", 8), ("-", 5))
    text = st.sample_chain_solution(3, ops, rng, step_error=0.0, guess_prob=0.0, connectors=(". ",))
    assert text == "3+4=7. 7+8=5. 5-5=0. \\boxed{0}"
    parsed = st.parse_chain_solution(text)
    assert parsed["steps"] == [(3, "+", 4, 7), (7, "+", 8, 5), (5, "-", 5, 0)]
    assert parsed["step_errors"] == 0 and parsed["answer"] == "0" and not parsed["guess"]
    assert accuracy_reward(["p"], [text], answer=["0"]) == [1.0]


def test_always_wrong_step_makes_the_answer_wrong():
    # a wrong intermediate value is carried on; + and - are bijections mod 10, so one slip changes the answer
    rng = random.Random(1)
    for _ in range(50):
        start, ops = st.sample_chain_problem(rng)
        text = st.sample_chain_solution(start, ops, rng, step_error=1.0, guess_prob=0.0)
        parsed = st.parse_chain_solution(text)
        assert parsed["step_errors"] == len(ops)
        if len(ops) == 1:
            assert parsed["answer"] != str(st.chain_answer(start, ops))


def test_guess_solutions():
    rng = random.Random(2)
    ops = (("+", 1), ("+", 1), ("+", 1))
    right = [st.sample_chain_solution(0, ops, rng, guess_prob=1.0, guess_accuracy=1.0) for _ in range(5)]
    assert set(right) == {"\\boxed{3}"}
    wrong = [st.sample_chain_solution(0, ops, rng, guess_prob=1.0, guess_accuracy=0.0) for _ in range(30)]
    assert all(extract_answer(w) != "3" and extract_answer(w).isdigit() for w in wrong)
    parsed = st.parse_chain_solution("\\boxed{3}")
    assert parsed["guess"] and parsed["steps"] == [] and parsed["answer"] == "3"


def test_solution_distribution_has_the_right_mode():
    rng = random.Random(3)
    start, ops = 2, (("+", 5), ("-", 3), ("+", 9), ("-", 1))
    right = str(st.chain_answer(start, ops))
    counts = {}
    for _ in range(4000):
        answer = extract_answer(st.sample_chain_solution(start, ops, rng))
        counts[answer] = counts.get(answer, 0) + 1
    # P(right) = 0.75 * 0.8^4 (+ rare cancellations) + 0.25 * 0.3 ~ 0.38; each wrong digit ~ 0.07
    assert max(counts, key=counts.get) == right
    assert 0.3 < counts[right] / 4000 < 0.5
    assert max(v for a, v in counts.items() if a != right) / 4000 < 0.12


def test_chain_rows_and_metrics():
    rows = st.chain_rows(5, seed=0)
    assert len(rows) == 5 and len({r["prompt"][0]["content"] for r in rows}) == 5
    start, ops = st.parse_chain_prompt(rows[0]["prompt"][0]["content"])
    assert rows[0]["answer"] == str(st.chain_answer(start, ops))
    row = {"prompt": "Compute 3+4+8-5 mod 10.", "answer": "0"}
    completions = [
        [
            {"text": "3+4=7. 7+8=5. 5-5=0. \\boxed{0}"},  # worked, right
            {"text": "3+4=7, then 7+8=6. 6-5=1. \\boxed{1}"},  # worked, one slip, wrong
            {"text": "\\boxed{0}"},  # right guess
            {"text": "\\boxed{4}"},  # wrong guess
        ]
    ]
    metrics = st.chain_metrics([row], completions)
    assert metrics["guess_fraction"] == 0.5 and metrics["worked_fraction"] == 0.5
    assert metrics["mean_steps"] == 1.5
    assert metrics["step_error_rate"] == pytest.approx(1 / 6)
    assert metrics["guess_accuracy"] == 0.5 and metrics["worked_accuracy"] == 0.5


# ------------------------------------------------------------------------------------------------ rhyming couplets


def test_poem_checks_by_hand():
    good = "the red moon sings\nthe old fox rings"
    assert st.poem_checks(good, "moon") == {"form": True, "topic": True, "rhyme": True, "valid": True}
    assert st.poem_quality(good, "moon") == 1.0
    assert st.poem_checks(good, "fox")["topic"] is False  # the topic must be the first line's noun
    assert st.poem_checks("the red moon sings\nthe old fox glows", "moon")["rhyme"] is False
    assert st.poem_checks("the red moon sings\nthe old fox sings", "moon")["rhyme"] is False  # same verb
    assert st.poem_checks("the red moon sings", "moon")["form"] is False  # one line
    assert st.poem_checks("the purple moon sings\nthe old fox rings", "moon")["form"] is False  # unknown word
    assert st.poem_checks("a red moon sings\nthe old fox rings", "moon")["valid"] is False
    assert st.poem_checks("  The Red moon sings \n\n the old fox rings\n", "moon")["valid"] is True
    assert st.poem_quality(good, None) == 0.0


def test_poem_quality_reward_reads_topic_from_prompt():
    prompts = [[{"role": "user", "content": st.poem_prompt("moon")}], "Write a poem about the sea."]
    completions = [[{"role": "assistant", "content": "the red moon sings\nthe old fox rings"}], "the red moon glows"]
    assert st.prompt_topic(prompts[0]) == "moon" and st.prompt_topic(prompts[1]) == "sea"
    assert st.poem_quality_reward(prompts, completions) == [1.0, 0.0]
    # well-formed, off-topic, rhyming: 2 of 3 constraints
    assert st.poem_quality_reward(["Write a poem about the sea."], ["the red moon sings\nthe old fox rings"]) == [
        pytest.approx(2 / 3)
    ]


def test_base_and_aligned_corpora():
    rng = random.Random(0)
    base = [st.sample_base_poem(rng, "star") for _ in range(2000)]
    valid = sum(st.poem_quality(p, "star") for p in base) / len(base)
    assert 0.75 < valid < 0.85  # 20% flawed
    assert all(st.poem_checks(p, "star")["form"] for p in base)
    aligned = [st.sample_aligned_poem(rng, "star") for _ in range(2000)]
    assert all(st.poem_quality(p, "star") == 1.0 for p in aligned)
    # the aligned corpus is far less diverse than the base corpus
    assert len(set(aligned)) < 0.5 * len(set(base))
    top = max(set(aligned), key=aligned.count)
    assert aligned.count(top) / len(aligned) > 0.1 > max(base.count(p) for p in set(base)) / len(base)


def test_poem_metrics():
    rows = st.creative_rows(topics=("moon",))
    assert rows == [{"prompt": [{"role": "user", "content": "Write a short poem about the moon."}], "topic": "moon"}]
    good = "the red moon sings\nthe old fox rings"
    group = [{"text": good}, {"text": good}, {"text": "the red moon glows\nthe old fox flows"}, {"text": "moon"}]
    metrics = st.poem_metrics(rows, [group])
    assert metrics["quality"] == 0.75 and metrics["form_fraction"] == 0.75
    assert metrics["distinct_poems"] == 0.75 and metrics["distinct_valid_poems"] == 0.5
    with pytest.raises(ValueError):
        st.poem_prompt("dragon")


# ------------------------------------------------------------------------------------------------ pretraining script


def _load_pretrain_script():
    from trl_powerflow.cli import pretrain_base

    return pretrain_base


@pytest.mark.parametrize("task", ["reasoning", "creative"])
def test_pretrain_script_is_deterministic(task, tmp_path):
    import json

    from safetensors.torch import load_file

    script = _load_pretrain_script()
    argv = ["--task", task, "--hidden_size", "32", "--num_layers", "1", "--steps", "3", "--aligned_steps", "2"]
    argv += ["--batch_size", "8", "--num_train_prompts", "6", "--num_eval_prompts", "3", "--skip_eval"]
    first, second = tmp_path / "a", tmp_path / "b"
    script.main(argv + ["--output_dir", str(first)])
    script.main(argv + ["--output_dir", str(second)])
    models = ["base"] + (["aligned"] if task == "creative" else [])
    for name in models:
        a = load_file(str(first / name / "model.safetensors"))
        b = load_file(str(second / name / "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    train = [json.loads(line) for line in (first / "train.jsonl").read_text().splitlines()]
    evaluation = [json.loads(line) for line in (first / "eval.jsonl").read_text().splitlines()]
    if task == "reasoning":
        assert len(train) == 6 and len(evaluation) == 3 and all("answer" in r for r in train + evaluation)
        assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in evaluation}
    else:
        assert len(train) == 24 and len(evaluation) == 8 and all("topic" in r for r in train)
    record = json.loads((first / "pretrain.json").read_text())
    assert record["task"] == task and record["losses"][-1]["step"] == 3
    # a complete output directory is reused, not retrained
    assert script.main(argv + ["--output_dir", str(first)]) == str(first)
