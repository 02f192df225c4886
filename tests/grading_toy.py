"""Made-up exercises for tests/integration/test_grading.py, in a module of their own that the grader's test worker
imports.

TOY: task `double` (3 points over two tests) and task `negate` (1 point), whose reference is `reference_negate`.
BROKEN: one task per broken way of doubling a tensor (1 point each), and `negate`.
"""

import torch

from llama_course.grading.assertions import assert_tensor_close
from llama_course.grading.registry import Exercise

TOY = Exercise(chapter=99, name="99_toy", title="toy")


def reference_negate(x):
    return -x


@TOY.test("double", points=2)
def doubles_a_random_tensor(double):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert_tensor_close(double(x), 2 * x)


@TOY.test("double", points=1)
def doubles_zero_to_zero(double):
    assert_tensor_close(double(torch.zeros(2, 2)), torch.zeros(2, 2))


@TOY.test("negate", points=1)
def negates(negate):
    assert torch.equal(negate(torch.ones(2)), -torch.ones(2))


TOY.references("negate", reference_negate)

BROKEN_TASKS = ["raises", "prints_a_forged_score", "loops_forever", "wrong_shape", "exits_the_process",
                "calls_sys_exit", "returns_a_fooling_subclass"]
BROKEN = Exercise(chapter=98, name="98_broken", title="broken")
for task in BROKEN_TASKS:
    BROKEN.test(task, points=1)(doubles_zero_to_zero)
BROKEN.test("negate", points=1)(negates)

CHEATS_TASKS = ["the_reference_itself", "a_call", "a_copy_of_its_code", "a_partial"]
CHEATS = Exercise(chapter=97, name="97_cheats", title="cheats")
for task in CHEATS_TASKS:
    CHEATS.test(task, points=1)(negates)
    CHEATS.references(task, reference_negate)
