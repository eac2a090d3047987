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
