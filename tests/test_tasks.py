"""The task suite: seeded, disjoint splits, exact checkers, encodings."""

import pytest

from dllm_decoding import ConfigError
from dllm_decoding.tasks import ALPHABET, TASKS, Example, get_task


@pytest.mark.parametrize("name", list(TASKS))
def test_splits_never_overlap_and_are_seeded(name):
    task = TASKS[name]
    test = task.examples("test", 60, seed=0)
    assert test == task.examples("test", 60, seed=0)
    assert {task.canonical(e) for e in test}.isdisjoint({task.canonical(e) for e in task.examples("train", 300, seed=1)})
    assert {task.canonical(e) for e in test}.isdisjoint({task.canonical(e) for e in task.examples("validation", 60)})
    assert all(task.split_of(e) == "test" for e in test)


@pytest.mark.parametrize("name", list(TASKS))
def test_answers_are_correct_fit_and_use_the_alphabet(name):
    task = TASKS[name]
    for ex in task.examples("train", 100, seed=3):
        assert task.check(ex.answer, ex), ex
        assert 1 <= len(ex.answer) <= task.gen_length
        assert set(ex.prompt + ex.answer) <= set(ALPHABET)
        assert not task.check(ex.answer + "0", ex)


def test_answer_lengths_span_short_and_long():
    longest = {n: max(len(e.answer) for e in t.examples("train", 300)) for n, t in TASKS.items()}
    assert min(longest.values()) <= 8 and max(longest.values()) >= 30


def test_checkers_are_exact_where_answers_are_unique():
    add = get_task("addition")
    ex = Example("A21+9=", "03")  # 12 + 9 = 21, written least-significant first
    assert add.check("12", Example("A21+9=", "12")) and not add.check("21", Example("A21+9=", "12"))
    assert ex.answer != "12"


def test_latin_square_accepts_any_valid_completion_and_nothing_else():
    task = get_task("latin_square")
    ex = Example("L1234341221434321=".replace("4321=", "____="), "1234341221434321")
    assert task.check("1234341221434321", ex)
    # another square with the same givens is also right; a broken column is not
    assert not task.check("1234341221434312", ex)
    assert not task.check("123434122143432", ex)
    assert not task.check("2234341221434321", ex)  # contradicts a given


def test_complement_accepts_any_order():
    task = get_task("complement")
    ex = Example("M0123456abcdef=", "789")
    assert task.check("987", ex) and task.check("789", ex)
    assert not task.check("778", ex) and not task.check("78", ex)


def test_unknown_task_and_split_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown task 'sorting'; did you mean 'sort'"):
        get_task("sorting")
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        TASKS["copy"].examples("dev", 3)


def test_the_suite_has_the_required_tasks_and_answer_lengths():
    assert {"copy", "reverse", "sort", "insert", "addition", "latin_square"} <= set(TASKS)
    assert max(t.gen_length for t in TASKS.values()) >= 32  # one long-answer task
    assert sum(t.gen_length <= 16 for t in TASKS.values()) >= len(TASKS) - 1  # the rest short


def test_every_split_is_fixed_by_the_problem_not_by_the_seed():
    # the split is a hash of the canonical problem: any example drawn anywhere lands in its split
    for task in TASKS.values():
        for split in ("train", "validation", "test"):
            for ex in task.examples(split, 20, seed=5):
                assert task.split_of(ex) == split
        assert all(task.split_of(task.sample(__import__("random").Random(1))) == "train" for _ in range(5))


def test_addition_writes_the_sum_least_significant_digit_first():
    task = get_task("addition")
    for ex in task.examples("test", 50):
        a, b = ex.prompt[1:-1].split("+")
        assert int(ex.answer[::-1]) == int(a[::-1]) + int(b[::-1])


def test_encode_batch_left_pads_and_decode_answer_strips_eos_and_pad():
    import torch

    from dllm_decoding.reference.tokenizer import build_tokenizer
    from dllm_decoding.tasks import decode_answer, encode_answers, encode_batch

    tok = build_tokenizer()
    task = get_task("reverse")
    examples = [Example("R12=", "21"), Example("R123456=", "654321")]
    prompt, mask = encode_batch(tok, examples, task)
    assert prompt.shape == mask.shape == (2, 8) and prompt.dtype == torch.long
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and mask[1].tolist() == [1] * 8
    assert prompt[0, :4].tolist() == [tok.pad_token_id] * 4
    assert tok.decode(prompt[0, 4:].tolist()) == "R12="
    answers = encode_answers(tok, examples, task)
    assert answers.shape == (2, task.gen_length)
    assert answers[0, 2:].tolist() == [tok.eos_token_id] * (task.gen_length - 2)
    assert [decode_answer(tok, a) for a in answers] == ["21", "654321"]
    # everything after the first EOS is ignored; stray pads are dropped
    assert decode_answer(tok, torch.tensor([tok.pad_token_id, *answers[0, :2].tolist(), tok.eos_token_id, 5])) == "21"
    with pytest.raises(ValueError, match="outside the task alphabet"):
        encode_batch(tok, [Example("R1?2=", "21")], task)
