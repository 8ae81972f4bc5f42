"""The annotation queue's priority scheme (pure)."""

from dataeff.queue import EVAL_PRIORITY, LOWCONF_PRIORITY, UNREQUESTED, batch_base, priorities, requested_order


def test_first_id_is_labeled_first_and_batches_stack_in_request_order():
    first = priorities(["a", "b", "c"], batch_base(0, 3))
    later = priorities(["d", "e"], batch_base(40, 2))
    assert requested_order({**first, **later, "f": UNREQUESTED}) == ["d", "e", "a", "b", "c"]


def test_low_confidence_then_eval_then_any_batch_of_a_realistic_project():
    queue = {
        **priorities(["x"], batch_base(40_000, 100)),
        **priorities(["low"], LOWCONF_PRIORITY),
        **priorities(["ev"], EVAL_PRIORITY),
    }
    assert requested_order(queue) == ["low", "ev", "x"]
