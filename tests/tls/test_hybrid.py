"""Post-quantum hybrid key exchange (draft-ietf-tls-ecdhe-mlkem):
X25519MLKEM768 (0x11EC) and SecP256r1MLKEM768 (0x11EB).

- the combination: our server's share and secret checked against a client
  written from the draft (``miniclient.ClientShare``, which decapsulates with
  a fixed FIPS 203 seed and so recomputes the secret on its own), in both
  providers (inline, and vcrypto with the encapsulation at the host);
- the draft's exact share lengths and the ML-KEM key check (illegal_parameter);
- hypothesis on the share parser;
- negotiation: hybrid first when shared, a client that only sends X25519
  keeps X25519 (no extra round trip), HelloRetryRequest asks for the hybrid
  when no share fits, TLS 1.2 never picks a hybrid.
"""
from __future__ import annotations

import hashlib

import pytest
import trio
from hypothesis import given, settings, strategies as st

from tests.tls.helpers import server_config
from tests.tls.memstream import pair
from tests.tls.miniclient import ClientShare, client_hello
from tests.tls.test_stream_probes import assert_refused, echo_after, refused
from vcproxy.tls import AlertDescription as A, InlineProvider, IllegalParameter
from vcproxy.tls import _codec as c
from vcproxy.tls._errors import HandshakeFailure
from vcproxy.tls._handshake import Epoch, KeyExchange, SendHandshake, ServerHandshake
from vcproxy.tls._negotiate12 import choose_group12
from vcproxy.tls._provider import HYBRID_SHARE_BYTES, hybrid_split

X25519, P256, X25519MLKEM768, SECP256R1MLKEM768 = 0x001D, 0x0017, 0x11EC, 0x11EB
HYBRIDS = ["X25519MLKEM768", "SecP256r1MLKEM768"]
#: A fixed FIPS 203 key-generation seed (d || z): the client's ML-KEM key is
#: then the same in every run.
SEED = bytes(range(64))


@pytest.fixture(params=["inline", "vcrypto"])
def provider(request):
    if request.param == "inline":
        return InlineProvider()
    return request.getfixturevalue("vcrypto_tls_provider")


def test_group_ids_and_sizes_are_the_drafts():
    assert c.GROUP_IDS["X25519MLKEM768"] == 0x11EC
    assert c.GROUP_IDS["SecP256r1MLKEM768"] == 0x11EB
    assert HYBRID_SHARE_BYTES == {"X25519MLKEM768": (1184 + 32, 1088 + 32),
                                  "SecP256r1MLKEM768": (65 + 1184, 65 + 1088)}


@pytest.mark.parametrize("group", HYBRIDS)
def test_share_layout_with_a_fixed_mlkem_key(group):
    kx = ClientShare(group, mlkem_seed=SEED)
    ek = kx.kem.public_key().public_bytes_raw()
    # (the fixed seed gives a fixed encapsulation key: pinned by its digest,
    # so a change in the ML-KEM underneath shows up here)
    assert hashlib.sha256(ek).hexdigest()[:16] == EK_DIGEST
    got_ek, got_ecdh = hybrid_split(group, kx.share)
    assert got_ek == ek
    if group == "X25519MLKEM768":
        assert kx.share[:1184] == ek and got_ecdh == kx.share[1184:] and len(got_ecdh) == 32
    else:
        assert kx.share[65:] == ek and got_ecdh == kx.share[:65] and got_ecdh[0] == 4


EK_DIGEST = "0b7934c83125c788"


@pytest.mark.parametrize("group", HYBRIDS)
async def test_combination_matches_an_independent_client(group, provider):
    # The client decapsulates the server's ciphertext with its fixed key and
    # does its own ECDH: the server's 64-byte secret must be exactly the two
    # halves in the draft's order (swapping them, or the share halves, fails).
    kx = ClientShare(group, mlkem_seed=SEED)
    own, shared = await provider.key_exchange(group, kx.share)
    assert len(own) == HYBRID_SHARE_BYTES[group][1]
    assert len(shared) == 64
    assert shared == kx.shared(own)
    # and a second exchange is fresh (new ciphertext, new ECDH key)
    own2, shared2 = await provider.key_exchange(group, kx.share)
    assert own2 != own and shared2 != shared and shared2 == kx.shared(own2)


def _bad_shares(group):
    good = ClientShare(group, mlkem_seed=SEED).share
    n = HYBRID_SHARE_BYTES[group][0]
    ecdh_first = group == "SecP256r1MLKEM768"
    ek_bad = b"\xff" * 1184  # FIPS 203 §7.2: coefficients not reduced mod q
    yield "empty", b""
    yield "short", good[:-1]
    yield "long", good + b"\x00"
    yield "classical-only", good[:65] if ecdh_first else good[1184:]
    yield "mlkem-only", good[65:] if ecdh_first else good[:1184]
    yield "server-sized", good[:HYBRID_SHARE_BYTES[group][1]]
    yield "ek-not-reduced", good[:65] + ek_bad if ecdh_first else ek_bad + good[1184:]
    if ecdh_first:
        yield "compressed-point", b"\x02" + good[1:]
        yield "point-off-curve", good[:64] + bytes([good[64] ^ 1]) + good[65:]
    else:
        yield "x25519-small-order", good[:1184] + b"\x01" + bytes(31)
    assert len(good) == n


BAD = [(g, name, share) for g in HYBRIDS for name, share in _bad_shares(g)]


@pytest.mark.parametrize("group,name,share", BAD, ids=[f"{g}-{n}" for g, n, _ in BAD])
async def test_bad_hybrid_share_is_illegal_parameter(group, name, share, provider):
    with pytest.raises(IllegalParameter):
        await provider.key_exchange(group, share)


@pytest.mark.parametrize("group", HYBRIDS)
async def test_bad_hybrid_share_in_a_handshake_is_an_illegal_parameter_alert(config, group):
    server, _, client = pair(config)
    share = ClientShare(group).share[:-1]

    async def send(cl):
        gid = c.GROUP_IDS[group]
        await cl.send_plain(22, client_hello(groups=(gid,), key_shares=[(gid, share)]))
    failure, alert = await refused(server, client, send, after_handshake=False)
    assert_refused(failure, alert, A.illegal_parameter)


@settings(max_examples=300, deadline=None)
@given(group=st.sampled_from(HYBRIDS),
       share=st.one_of(st.binary(max_size=1300), st.binary(min_size=1216, max_size=1216),
                       st.binary(min_size=1249, max_size=1249)))
def test_share_parser_splits_exact_lengths_only(group, share):
    want = HYBRID_SHARE_BYTES[group][0]
    try:
        ek, ecdh = hybrid_split(group, share)
    except IllegalParameter:
        assert len(share) != want
        return
    assert len(share) == want and len(ek) == 1184
    assert share == (ecdh + ek if group == "SecP256r1MLKEM768" else ek + ecdh)


# ---- whole handshakes -------------------------------------------------------

@pytest.mark.parametrize("group", HYBRIDS)
async def test_hybrid_handshake(config, group, provider):
    server, _, client = pair(config, provider, group=group)
    await echo_after(server, client)
    assert server.named_group == group
    assert len(client.server_share) == HYBRID_SHARE_BYTES[group][1]


async def test_hybrid_preferred_when_the_client_shares_both(config):
    server, _, client = pair(config, group="X25519MLKEM768")
    x = ClientShare("x25519")
    ch = client_hello(groups=(X25519MLKEM768, X25519),
                      key_shares=[(X25519, x.share), (X25519MLKEM768, client.share)])
    await echo_after(server, client, ch=ch)
    assert server.named_group == "X25519MLKEM768"


async def test_client_sharing_only_x25519_keeps_x25519(config):
    # The hybrid is listed (first, even) but only X25519 has a share: take it
    # rather than cost a round trip (RFC 8446 §4.2.8 leaves the choice to us).
    server, rec, client = pair(config)
    ch = client_hello(groups=(X25519MLKEM768, X25519), key_shares=[(X25519, client.share)])
    await echo_after(server, client, ch=ch)
    assert server.named_group == "x25519"
    assert c.HRR_RANDOM not in b"".join(rec.sent)


async def test_client_without_the_hybrid_gets_x25519(config):
    server, _, client = pair(config)
    await echo_after(server, client)
    assert server.named_group == "x25519"


def test_hello_retry_request_asks_for_the_hybrid(config):
    # No share of a group we serve (only GREASE): the server's first choice
    # among the listed groups is the hybrid -> HRR naming 0x11EC.
    asked = []  # (hybrids never take a pre-generated share: ML-KEM needs the client's key)
    hs = ServerHandshake(config, random_bytes=lambda n: b"\x07" * n, now_s=lambda: 1000.0,
                         key_share=lambda group: asked.append(group))
    gid = X25519MLKEM768
    ch1 = client_hello(groups=(0x0A0A, P256, gid), key_shares=[(0x0A0A, b"\x00")])
    [hrr] = [cmd for cmd in hs.receive_message(Epoch.INITIAL, ch1) if isinstance(cmd, SendHandshake)]
    assert hrr.data[6:38] == c.HRR_RANDOM
    assert c.extension(c.EXT_KEY_SHARE, gid.to_bytes(2, "big")) in hrr.data
    cookie = hrr.data.split(c.EXT_COOKIE.to_bytes(2, "big"))[1][4:]
    share = ClientShare("X25519MLKEM768").share
    ch2 = client_hello(share=share, share_group=gid, groups=(P256, gid),
                       extra=c.extension(c.EXT_COOKIE, c.vec16(cookie)))
    [kx] = [cmd for cmd in hs.receive_message(Epoch.INITIAL, ch2) if isinstance(cmd, KeyExchange)]
    assert kx.group == "X25519MLKEM768" and kx.peer_public == share and kx.private_key is None
    assert asked == []


def test_tls12_never_picks_a_hybrid(test_certs):
    config = server_config([test_certs["ecdsa-p256"]])
    ch = c.parse_client_hello(client_hello(groups=(X25519MLKEM768, SECP256R1MLKEM768, X25519),
                                           share=bytes(32), versions=None))
    assert ch.groups == (X25519MLKEM768, SECP256R1MLKEM768, X25519)
    assert choose_group12(config, ch) == "x25519"
    ch.groups = (X25519MLKEM768, SECP256R1MLKEM768)
    with pytest.raises(HandshakeFailure):
        choose_group12(config, ch)
    ch.groups = None  # (any curve may be picked: still not a hybrid)
    assert choose_group12(server_config([test_certs["ecdsa-p256"]], groups=HYBRIDS + ["x25519"]),
                          ch) == "x25519"


def test_config_with_only_hybrids_must_not_serve_tls12(test_certs):
    with pytest.raises(ValueError, match="groups: no TLS 1.2 group"):
        server_config([test_certs["ecdsa-p256"]], groups=HYBRIDS)
    cfg = server_config([test_certs["ecdsa-p256"]], groups=HYBRIDS, versions=["1.3"])
    assert tuple(cfg.groups) == tuple(HYBRIDS)


def test_default_preference_puts_the_hybrids_first(test_certs):
    assert tuple(server_config([test_certs["ecdsa-p256"]]).groups)[:2] == tuple(HYBRIDS)
