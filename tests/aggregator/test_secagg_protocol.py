"""The secure aggregation protocol core, without a broker: the silos' ``SecureSilo`` and the aggregator's
``SecureRound`` exchange their messages directly.

* Shamir: any threshold of shares recovers the secret; fewer do not;
* the sum is recovered exactly in the ring, with no dropout and with dropouts at each step;
* fewer survivors than the threshold at any step fails the round, with the step;
* a forged key signature, malformed shares, a wrong-size vector, an altered revealed share are rejected;
* a silo never reveals both the seed and the key shares of one silo, whatever it is asked;
* the dequantised mean is within the stated bound of the exact weighted mean.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fedmq.aggregator.secure.protocol import SEALED_SHARE_BYTES, Rejected, SecureRound, SecureRoundFailed
from fedmq.edge_client import secure as silo_side
from fedmq.edge_client.secure import SecureSilo
from fedmq.errors import ProtocolError
from fedmq.schemas import masking as mk
from fedmq.schemas.messages import dump_header, parse_header

JOB, RUN = "job", "run1"


def test_shamir_threshold() -> None:
    secret = bytes(range(32))
    shares = mk.split(secret, 3, [1, 2, 3, 4, 5])
    assert mk.combine({x: shares[x] for x in (1, 3, 5)}) == secret
    assert mk.combine({x: shares[x] for x in (2, 4, 5)}) == secret
    with pytest.raises(mk.MaskingError):  # two of a threshold of three: (almost surely) no 32-byte secret
        mk.combine({x: shares[x] for x in (1, 2)})


def test_a_sealed_share_has_the_size_the_aggregator_checks() -> None:
    """The size lives in schemas/secagg.py; a silo's sealed share (both secrets' shares at their widest) has it."""
    from fedmq.schemas.secagg import Share

    widest = Share(x=1000, y=format(2**521 - 2, "x"), signature=silo_side.b64(bytes(64)))
    sealed = mk.seal(bytes(32), silo_side._pack(widest, widest), b"context")
    assert len(sealed) == SEALED_SHARE_BYTES


def roundtrip(header):
    """Every message goes through its wire form, as on the broker."""
    return parse_header(dump_header(header))


class Party:
    def __init__(self, n: int, length: int, seed: int = 0) -> None:
        self.names = [f"s{i}" for i in range(n)]
        self.signing = {s: Ed25519PrivateKey.generate() for s in self.names}
        publics = {s: k.public_key() for s, k in self.signing.items()}
        self.silos = {s: SecureSilo(JOB, s, self.signing[s], publics) for s in self.names}
        self.publics = publics
        rng = np.random.default_rng(seed)
        self.deltas = {s: rng.normal(0, 0.01, length - 1) for s in self.names}
        self.weights = {s: int(rng.integers(10, 100)) for s in self.names}
        self.length = length

    def server(self, threshold: int, clip_norm: float = 1.0) -> SecureRound:
        return SecureRound(JOB, RUN, 1, list(self.names), threshold, clip_norm, 100, self.length, self.publics)


def run(party: Party, server: SecureRound, *, gone_keys=(), gone_shares=(), gone_upload=(), gone_reveal=(),
        tamper=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One round; ``gone_*``: silos that stop answering before that step. Returns the unmasked sum and the
    masked vectors the server received."""
    setup = roundtrip(server.setup())
    for name, silo in party.silos.items():
        keys = silo.on_setup(setup)
        if name not in gone_keys:
            server.on_keys(roundtrip(keys))
    key_list = roundtrip(server.close_keys())
    for name in server.u1:
        shares = party.silos[name].on_key_list(key_list)
        if name not in gone_shares:
            server.on_shares(roundtrip(shares))
    inboxes = server.close_shares()
    uploads = {}
    for name in server.u2:
        silo = party.silos[name]
        masked = silo.trained(1, RUN, party.deltas[name], party.weights[name])
        assert masked is None  # the inbox has not come yet
        masked = silo.on_inbox(roundtrip(inboxes[name]))
        if name not in gone_upload:
            uploads[name] = masked
            server.on_masked(name, masked.astype("<u4").tobytes())
    unmask = roundtrip(server.close_uploads())
    for name in server.u3:
        reveal = party.silos[name].on_unmask(unmask)
        if tamper is not None:
            reveal = tamper(name, reveal)
        if name not in gone_reveal:
            try:
                server.on_reveal(roundtrip(reveal))
            except Rejected:
                pass
    return server.unmask(), uploads


def expected_sum(party: Party, server: SecureRound, silos) -> np.ndarray:
    total = np.zeros(party.length, dtype=mk.RING)
    for s in silos:
        total += mk.quantise(party.deltas[s], party.weights[s], clip_norm=server.clip_norm, weight_cap=100,
                             scale=server.scale)
    return total


def test_the_sum_is_recovered_exactly_and_the_mean_within_the_bound() -> None:
    party = Party(5, 1001)
    server = party.server(3)
    total, uploads = run(party, server)
    assert np.array_equal(total, expected_sum(party, server, party.names))
    mean, weight = mk.dequantise(total, scale=server.scale, weight_cap=100)
    assert weight == sum(party.weights.values())
    exact = sum(party.weights[s] * party.deltas[s] for s in party.names) / weight
    bound = mk.mean_error_bound(5, server.scale, 100, weight)
    assert np.max(np.abs(mean - exact)) <= bound
    assert bound < 1e-6
    # each masked vector alone looks nothing like the update it hides
    for s, masked in uploads.items():
        signed = masked[:-1].view(np.int32).astype(np.float64)
        assert abs(np.corrcoef(signed, party.deltas[s])[0, 1]) < 0.15


@pytest.mark.parametrize("where", ["gone_keys", "gone_shares", "gone_upload", "gone_reveal"])
def test_a_dropout_at_any_step_leaves_the_sum_of_the_others(where: str) -> None:
    party = Party(5, 300, seed=1)
    server = party.server(3)
    total, _ = run(party, server, **{where: {"s2"}})
    contributors = [s for s in party.names if where == "gone_reveal" or s != "s2"]
    assert np.array_equal(total, expected_sum(party, server, contributors))
    step = {"gone_keys": "keys", "gone_shares": "shares", "gone_upload": "upload", "gone_reveal": "reveal"}[where]
    assert server.dropped[step] == ["s2"]


def test_one_dropped_before_uploading_and_another_before_revealing() -> None:
    party = Party(5, 300, seed=2)
    server = party.server(3)
    total, _ = run(party, server, gone_upload={"s1"}, gone_reveal={"s3"})
    assert np.array_equal(total, expected_sum(party, server, ["s0", "s2", "s3", "s4"]))


@pytest.mark.parametrize("where", ["gone_keys", "gone_shares", "gone_upload", "gone_reveal"])
def test_fewer_than_the_threshold_fails_the_round_at_that_step(where: str) -> None:
    party = Party(5, 50, seed=3)
    server = party.server(4)
    with pytest.raises(SecureRoundFailed) as failed:
        run(party, server, **{where: {"s0", "s4"}})
    assert failed.value.step == {"gone_keys": "keys", "gone_shares": "shares", "gone_upload": "upload",
                                 "gone_reveal": "reveal"}[where]
    assert "fewer than the threshold" in failed.value.reason


def test_a_forged_key_signature_is_rejected() -> None:
    party = Party(3, 20)
    server = party.server(2)
    setup = server.setup()
    keys = party.silos["s1"].on_setup(setup)
    forged = keys.model_copy(update={"signature": base64.b64encode(party.signing["s0"].sign(b"x")).decode()})
    with pytest.raises(Rejected, match="not signed"):
        server.on_keys(forged)
    assert "s1" in server.rejected


def test_the_silos_check_the_key_signatures_the_aggregator_forwards() -> None:
    """An aggregator that swaps a silo's round keys for its own is caught by every silo."""
    party = Party(3, 20)
    server = party.server(2)
    setup = server.setup()
    for s in party.names:
        server.on_keys(party.silos[s].on_setup(setup))
    key_list = server.close_keys()
    mine = mk.public_bytes(mk.new_private_key())
    swapped = key_list.model_copy(update={"keys": [key_list.keys[0].model_copy(
        update={"mask_pk": base64.b64encode(mine).decode()})] + key_list.keys[1:]})
    with pytest.raises(ProtocolError, match="not signed"):
        party.silos["s1"].on_key_list(swapped)


def test_malformed_shares_and_wrong_size_vectors_are_rejected_and_the_round_goes_on() -> None:
    party = Party(5, 100, seed=4)
    server = party.server(3)
    setup = server.setup()
    for s in party.names:
        server.on_keys(party.silos[s].on_setup(setup))
    key_list = server.close_keys()
    for s in party.names:
        shares = party.silos[s].on_key_list(key_list)
        if s == "s0":  # hostile: a ciphertext cut short
            bad = dict(shares.shares, s1=shares.shares["s1"][:40])
            with pytest.raises(Rejected, match="malformed"):
                server.on_shares(shares.model_copy(update={"shares": bad}))
            continue
        server.on_shares(shares)
    inboxes = server.close_shares()
    assert "s0" not in server.u2
    for s in server.u2:
        masked = party.silos[s].on_inbox(inboxes[s]) if s != "s1" else None
        masked = party.silos[s].trained(1, RUN, party.deltas[s], party.weights[s]) if masked is None else masked
        if s == "s1":
            masked = party.silos[s].on_inbox(inboxes[s])
        payload = masked.astype("<u4").tobytes()
        if s == "s4":  # hostile: one element too many
            with pytest.raises(Rejected, match="masked vector"):
                server.on_masked(s, payload + b"\0\0\0\0")
            continue
        server.on_masked(s, payload)
    unmask = server.close_uploads()
    assert unmask.dropped == ["s4"]
    for s in server.u3:
        server.on_reveal(party.silos[s].on_unmask(unmask))
    total = server.unmask()
    assert np.array_equal(total, expected_sum(party, server, ["s1", "s2", "s3"]))
    # s4's self-mask seed was never revealed: its masked vector stays masked
    for reveal in server.reveals.values():
        assert "s4" not in reveal.seed_shares and "s4" in reveal.key_shares


def test_an_altered_revealed_share_is_rejected() -> None:
    party = Party(5, 40, seed=5)
    server = party.server(3)

    def tamper(name, reveal):
        if name != "s2":
            return reveal
        share = reveal.seed_shares["s0"]
        altered = share.model_copy(update={"y": format(int(share.y, 16) ^ 1, "x")})
        return reveal.model_copy(update={"seed_shares": dict(reveal.seed_shares, s0=altered)})

    total, _ = run(party, server, tamper=tamper)
    assert "s2" in server.rejected
    assert np.array_equal(total, expected_sum(party, server, party.names))


def test_a_silo_never_reveals_both_secrets_of_one_silo() -> None:
    party = Party(4, 30, seed=6)
    server = party.server(2)
    setup = server.setup()
    for s in party.names:
        server.on_keys(party.silos[s].on_setup(setup))
    key_list = server.close_keys()
    for s in party.names:
        server.on_shares(party.silos[s].on_key_list(key_list))
    inboxes = server.close_shares()
    for s in party.names:
        party.silos[s].on_inbox(inboxes[s])
        server.on_masked(s, party.silos[s].trained(1, RUN, party.deltas[s], 10).astype("<u4").tobytes())
    unmask = server.close_uploads()
    # an aggregator that names s0 both survivor and dropped is refused
    both = unmask.model_copy(update={"dropped": ["s0"]})
    with pytest.raises(ProtocolError, match="reveal too much"):
        party.silos["s1"].on_unmask(both)
    # and after one answer, a second request (s0 now "dropped") gets nothing
    assert party.silos["s2"].on_unmask(unmask) is not None
    again = unmask.model_copy(update={"survivors": ["s1", "s2", "s3"], "dropped": ["s0"]})
    assert party.silos["s2"].on_unmask(again) is None


def test_the_secagg_headers_share_the_protocol_version_and_parse_with_the_rest() -> None:
    from fedmq.schemas.messages import PROTOCOL_VERSION
    from fedmq.schemas.secagg import SECAGG_MESSAGES, SecAggAbort

    for message in SECAGG_MESSAGES:
        assert message.model_fields["protocol"].default == PROTOCOL_VERSION
        assert set(message.model_fields) >= {"protocol", "job", "run_id", "round", "type"}
    abort = SecAggAbort(job=JOB, run_id=RUN, round=3, reason="too few")
    assert roundtrip(abort) == abort


def test_masks_added_early_for_the_key_list_are_taken_away_for_a_silo_whose_shares_never_came() -> None:
    """The silo masks its update as soon as it has the key list (``premask``, while the aggregator collects
    shares); a silo of the key list missing from the inbox has its pairwise mask taken away again."""
    party = Party(5, 200, seed=7)
    server = party.server(3)
    setup = server.setup()
    for s in party.names:
        server.on_keys(party.silos[s].on_setup(setup))
        assert party.silos[s].trained(1, RUN, party.deltas[s], party.weights[s]) is None
    key_list = server.close_keys()
    for s in party.names:
        shares = party.silos[s].on_key_list(key_list)
        party.silos[s].premask(1, RUN)
        if s != "s2":
            server.on_shares(shares)
    inboxes = server.close_shares()
    for s in server.u2:
        server.on_masked(s, party.silos[s].on_inbox(inboxes[s]).astype("<u4").tobytes())
    unmask = server.close_uploads()
    for s in server.u3:
        server.on_reveal(party.silos[s].on_unmask(unmask))
    assert np.array_equal(server.unmask(), expected_sum(party, server, ["s0", "s1", "s3", "s4"]))


def test_a_repeated_key_message_is_a_no_op_and_other_keys_are_rejected() -> None:
    party = Party(3, 20)
    server = party.server(2)
    setup = server.setup()
    keys = party.silos["s0"].on_setup(setup)
    server.on_keys(keys)
    server.on_keys(keys)  # a re-send after a reconnect
    assert "s0" not in server.rejected
    with pytest.raises(Rejected, match="second, different"):
        server.on_keys(party.silos["s0"].on_setup(setup))
    copied = party.silos["s1"].on_setup(setup).model_copy(update={"mask_pk": keys.mask_pk})
    with pytest.raises(Rejected):  # another silo's key (its signature fails first, or the copy is caught)
        server.on_keys(copied)
