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


def test_waiting_items_follow_the_loops_own_request_order_below_every_request():
    from dataeff.iteration import next_batch
    from dataeff.queue import queue_order, waiting_priorities

    ids = [f"item-{i:03d}" for i in range(60)]
    current = {i: None for i in ids} | {"item-000": 1050.0, "low": LOWCONF_PRIORITY}  # item-000 was requested
    waiting = waiting_priorities(current, seed=7, reserved=["low"], last=["item-059"])
    assert "item-000" not in waiting and "low" not in waiting  # a request keeps its place
    assert all(p < UNREQUESTED for p in waiting.values()) and requested_order({**current, **waiting}) == [
        "low",
        "item-000",
    ]
    # the order in which the loop would request them (the same seed), then the bottom ones
    order = sorted(waiting, key=lambda i: -waiting[i])
    assert order == next_batch([i for i in ids[1:] if i != "item-059"], 58, seed=7) + ["item-059"]
    assert order[:10] != sorted(order[:10])  # not the import order
    # what annotators meet, with Label Studio's task ids in import order: requests first, then the loop's order
    tasks = {i: (({**current, **waiting}).get(i), k) for k, i in enumerate(["low", *ids])}
    assert queue_order(tasks) == ["low", "item-000", *order]
    # re-running gives the same numbers (nothing to update in Label Studio)
    assert waiting_priorities({**current, **waiting}, seed=7, reserved=["low"], last=["item-059"]) == waiting
