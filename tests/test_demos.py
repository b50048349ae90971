from cyclealign.demos import DemoPool, agreement_demonstration, select_demonstrations
from cyclealign.records import Demonstration


def _demo(q, length, rnd):
    return Demonstration(q, ["a"] * length, list(range(length)), "dynamic", rnd, length)


def test_agreement_demonstration_keeps_only_agreed_responses():
    d = agreement_demonstration("User: q", ["r0", "r1", "r2", "r3"], [3, 1, 0], round_index=2)
    assert d.responses == ["r0", "r1", "r3"]
    assert [d.responses[i] for i in d.ranking] == ["r3", "r1", "r0"]
    assert (d.source, d.round, d.agreement_len) == ("dynamic", 2, 3)


def test_pool_update_selection_and_eviction():
    pool = DemoPool(max_size=3)
    pool.add(_demo("short-old", 2, 0))
    pool.add(_demo("long-old", 4, 0))
    pool.add(_demo("short-new", 2, 1))
    assert [d.query for d in pool.select(2)] == ["long-old", "short-new"]
    pool.add(_demo("mid-new", 3, 1))  # over capacity: drops the lowest priority (short-old)
    assert len(pool) == 3
    assert "short-old" not in [d.query for d in pool]
    assert [d.query for d in pool.select(5)] == ["long-old", "mid-new", "short-new"]


def test_select_demonstrations_static_first_then_dynamic():
    static = [Demonstration("s1", ["a", "b"], [0, 1]), Demonstration("s2", ["a", "b"], [1, 0])]
    pool = DemoPool([_demo("d1", 3, 0)])
    got = select_demonstrations(static, pool, num_static=1, num_dynamic=2)
    assert [d.query for d in got] == ["s1", "d1"]
