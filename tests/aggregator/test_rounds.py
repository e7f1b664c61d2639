"""Property tests of the round state machine: whatever arrives, in whatever order, no update is
counted twice or into the wrong round, and no round closes with fewer than min_clients."""

from __future__ import annotations

from fedmq.aggregator.rounds import RoundBook, sample_silos
from fedmq.errors import AlreadyCounted, UpdateRejected
from hypothesis import given, settings
from hypothesis import strategies as st

SILOS = ["a", "b", "c", "d", "e"]
DIGEST = "1" * 64

events = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.sampled_from(SILOS), st.integers(0, 6), st.sampled_from([DIGEST, "2" * 64]),
                  st.integers(0, 50)),
        st.tuples(st.just("leave"), st.sampled_from(SILOS)),
        st.tuples(st.just("join"), st.sampled_from(SILOS)),
        st.tuples(st.just("tick"), st.floats(0, 20)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(events, st.integers(1, 4), st.integers(1, 5), st.booleans())
def test_no_double_counting_no_wrong_round_no_thin_round(evts, min_clients: int, rounds: int, sampled: bool) -> None:
    now = 0.0
    number = 1
    online = set(SILOS[:3])
    book = RoundBook(number, min_clients, DIGEST, deadline=10.0, waiting=set(online), sampled=sampled)
    counted: set[tuple[str, int]] = set()
    closed: list[set[str]] = []
    for event in evts:
        kind = event[0]
        if kind == "update":
            _, silo, claimed, digest, samples = event
            try:
                book.admit(silo, claimed, digest, samples)
            except AlreadyCounted:
                assert (silo, claimed) in counted, "only what was counted is a repeat"
                continue
            except UpdateRejected:
                continue
            assert claimed == book.number, "only the open round's updates are admitted"
            assert digest == book.base_digest and samples > 0
            assert (silo, claimed) not in counted, "no update is counted twice"
            counted.add((silo, claimed))
            book.count(silo, samples, None)
        elif kind == "leave":
            online.discard(event[1])
            book.silo_left(event[1])
        elif kind == "join":
            online.add(event[1])
            book.silo_joined(event[1])
        else:
            now += event[1]
        if book.ready(now):
            assert len(book.contributors) >= min_clients, "no round with fewer than min_clients"
            assert {s for s, r in counted if r == book.number} == book.contributors
            closed.append(set(book.contributors))
            number += 1
            if number > rounds:
                break
            book = RoundBook(number, min_clients, DIGEST, deadline=now + 10, waiting=set(online), sampled=sampled)
    assert all(len(c) >= min_clients for c in closed)


def test_a_sampled_round_refuses_silos_it_did_not_ask() -> None:
    book = RoundBook(1, 1, DIGEST, deadline=10, waiting={"a"}, sampled=True)
    assert not book.silo_joined("b")
    try:
        book.admit("b", 1, DIGEST, 5)
    except UpdateRejected as exc:
        assert "not sampled" in exc.message
    else:
        raise AssertionError("an unsampled silo's update was admitted")


@given(st.sets(st.sampled_from(SILOS), min_size=1), st.floats(0.01, 1), st.integers(1, 5), st.integers(1, 3),
       st.integers(0, 100))
def test_sampling_is_seeded_and_never_below_min_clients(eligible, fraction, min_clients, per_round, seed) -> None:
    asked, sampled = sample_silos(eligible, fraction, None, min_clients, seed, round_number=3)
    assert asked <= eligible
    assert len(asked) >= min(min_clients, len(eligible))
    assert (asked, sampled) == sample_silos(eligible, fraction, None, min_clients, seed, round_number=3)
    assert sampled == (asked != eligible)
    by_count, _ = sample_silos(eligible, None, per_round, min_clients, seed, 1)
    assert len(by_count) == min(max(per_round, min_clients), len(eligible))


def test_a_repeat_of_a_counted_update_is_a_no_op_in_its_round_and_after_it_closed() -> None:
    """Issue 16: a repeat (a re-send after a reconnect, an answer to a re-ask) is never a rejection,
    whether it comes while its round is open or after the round closed."""
    import torch
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.aggregator.model import GlobalModel
    from fedmq.aggregator.sync import SyncRounds
    from fedmq.broker.url import BrokerUrl
    from fedmq.schemas import PayloadInfo, Update

    policy = SyncRounds(AggregatorConfig(broker=BrokerUrl("127.0.0.1", 1), rounds=3, round_timeout=60))
    model = GlobalModel.of(0, {"w": torch.zeros(2)}, "shuffle+zstd")
    policy.open(1, model, asked={"a", "b"}, sampled=False, min_clients=1, now=0.0)
    update = Update(job="j", run_id="r", silo="a", round=1, base_digest=model.digest, num_samples=5,
                    payload=PayloadInfo(codec="shuffle+zstd", size=1, sha256="ab" * 32))
    policy.count(update, policy.admit(update))
    try:
        policy.admit(update)
    except AlreadyCounted as exc:
        assert "already counted" in exc.message
    else:
        raise AssertionError("a repeat in the open round was admitted")
    policy.closed(last=False)
    policy.open(2, GlobalModel.of(1, {"w": torch.ones(2)}, "shuffle+zstd"), asked={"a", "b"}, sampled=False,
                min_clients=1, now=1.0)
    try:
        policy.admit(update)
    except AlreadyCounted as exc:
        assert "round is closed" in exc.message
    else:
        raise AssertionError("a repeat of a closed round's update was admitted")
    late = update.model_copy(update={"silo": "b"})
    try:
        policy.admit(late)  # b never sent round 1's update: late, not a repeat, so a recorded rejection
    except AlreadyCounted:
        raise AssertionError("an update never counted was taken for a repeat") from None
    except UpdateRejected as exc:
        assert "round 1 but round 2" in exc.message
