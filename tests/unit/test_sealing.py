"""Sealing state at rest: round trip, wrong key, damage, key files and the environment variable."""

from __future__ import annotations

import os

import nacl.secret
import pytest

from prime.core.errors import SealedFileError, StateKeyError
from prime.sealing import (ENV_VAR, HEADER_BYTES, MAC_BYTES, MAGIC, Sealer, StateKey, load_key_file,
                           resolve_state_key, write_key_file)

KEY = StateKey(bytes(range(32)), "test key")
OTHER = StateKey(bytes(range(1, 33)), "other key")
PLAIN = b'{"__metadata__":{"format":"pt"}} tensor bytes ' * 20


def test_round_trip_hides_the_plaintext():
    sealer = Sealer(KEY)
    sealed = sealer.seal(PLAIN)
    assert sealed.startswith(MAGIC) and b"__metadata__" not in sealed and b"tensor" not in sealed
    assert len(sealed) == len(PLAIN) + HEADER_BYTES + MAC_BYTES
    assert sealer.seal(PLAIN) != sealed  # a fresh nonce each time
    assert sealer.open(sealed, "f") == PLAIN
    nonce = bytes(sealed[HEADER_BYTES - 24: HEADER_BYTES])  # the body is plain NaCl SecretBox
    assert nacl.secret.SecretBox(KEY.secret).decrypt(bytes(sealed[HEADER_BYTES:]), nonce) == PLAIN
    assert sealer.open(memoryview(bytearray(sealed)), "f") == PLAIN and sealer.open(sealer.seal(b""), "f") == b""
    assert sealer.metrics() == {"sealed": True, "key_id": KEY.key_id.hex(), "files_sealed": 3, "files_opened": 3,
                                "mac_failures": 0}


def test_no_key_is_plaintext_as_before():
    sealer = Sealer()
    assert sealer.seal(PLAIN) == PLAIN and sealer.open(PLAIN, "f") == PLAIN
    with pytest.raises(StateKeyError, match=r"ckpt\.pt is sealed, but no state key is set.*--state-key-file"):
        sealer.open(Sealer(KEY).seal(PLAIN), "ckpt.pt")


def test_wrong_key_names_the_file_and_is_not_damage():
    sealed = Sealer(OTHER).seal(PLAIN)
    sealer = Sealer(KEY)
    with pytest.raises(StateKeyError, match=rf"round-7\.pt is sealed with another state key \(key id "
                                            rf"{OTHER.key_id.hex()}\).*{KEY.key_id.hex()}"):
        sealer.open(sealed, "round-7.pt")
    with pytest.raises(StateKeyError):
        sealer.check(sealed[:HEADER_BYTES], "round-7.pt")
    assert sealer.counts["mac_failures"] == 0


def test_plaintext_with_a_key_set_says_how_to_seal_it():
    with pytest.raises(StateKeyError, match="is not sealed, but a state key is set.*prime state rotate-key"):
        Sealer(KEY).open(PLAIN, "old.pt")


@pytest.mark.parametrize("where", [0, len(MAGIC) + 1 + 8 + 3, HEADER_BYTES + 2, -1])
def test_any_flipped_bit_fails_the_mac_or_the_header(where):
    sealed = bytearray(Sealer(KEY).seal(PLAIN))
    sealed[where] ^= 0x01
    sealer = Sealer(KEY)
    with pytest.raises((SealedFileError, StateKeyError)):
        sealer.open(bytes(sealed), "f")


def test_tampered_body_is_counted():
    sealed = bytearray(Sealer(KEY).seal(PLAIN))
    sealed[HEADER_BYTES + 40] ^= 0xFF
    sealer = Sealer(KEY)
    with pytest.raises(SealedFileError, match="fails its MAC"):
        sealer.open(bytes(sealed), "f")
    assert sealer.counts["mac_failures"] == 1


def test_every_truncation_is_damage_never_plaintext():
    sealed = Sealer(KEY).seal(PLAIN)
    sealer = Sealer(KEY)
    for cut in range(len(sealed)):
        with pytest.raises(SealedFileError):
            sealer.open(sealed[:cut], "f")
    assert sealer.counts["mac_failures"] == len(sealed)


def test_size_is_bounded_before_decrypting():
    with pytest.raises(SealedFileError, match="over the 100-byte limit"):
        Sealer(KEY).open(Sealer(KEY).seal(PLAIN), "f", max_bytes=100)


def test_key_file_must_be_private(tmp_path):
    key = write_key_file(tmp_path / "state.key")
    assert (tmp_path / "state.key").stat().st_mode & 0o777 == 0o600
    assert load_key_file(tmp_path / "state.key").secret == key.secret
    os.chmod(tmp_path / "state.key", 0o644)
    with pytest.raises(StateKeyError, match=r"mode 644.*chmod 600 .*state\.key"):
        load_key_file(tmp_path / "state.key")
    with pytest.raises(StateKeyError, match="never overwritten"):
        write_key_file(tmp_path / "state.key")
    (tmp_path / "bad.key").write_text("not hex\n")
    os.chmod(tmp_path / "bad.key", 0o600)
    with pytest.raises(StateKeyError, match=r"bad\.key: a state key is 64 hex digits"):
        load_key_file(tmp_path / "bad.key")
    with pytest.raises(StateKeyError, match="does not exist.*prime state keygen"):
        load_key_file(tmp_path / "missing.key")


def test_key_from_the_environment(tmp_path):
    assert resolve_state_key(None, {}) is None
    assert resolve_state_key(None, {ENV_VAR: KEY.secret.hex()}).secret == KEY.secret
    with pytest.raises(StateKeyError, match=f"environment variable {ENV_VAR}: a state key is 64 hex digits"):
        resolve_state_key(None, {ENV_VAR: "abc"})
    path = write_key_file(tmp_path / "k", OTHER)
    assert resolve_state_key(tmp_path / "k", {ENV_VAR: KEY.secret.hex()}).secret == path.secret  # the file wins
    assert KEY.secret.hex() not in repr(KEY)
