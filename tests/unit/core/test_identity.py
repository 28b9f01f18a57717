"""Node identity: a private key file, created once and reused; network id from the public key."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from prime.core.errors import IdentityError, PrimeError, SignatureError
from prime.core.identity import KEY_FILE, Identity, network_id, verify


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_file_created_private_and_reused(tmp_path):
    first = Identity.load_or_create(tmp_path / "node", "alice")
    key_file = tmp_path / "node" / KEY_FILE
    assert key_file.exists()
    assert mode(key_file) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    again = Identity.load_or_create(tmp_path / "node", "alice")
    assert again.public_key == first.public_key
    assert again.name == "alice"
    # no temp file left behind
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == [KEY_FILE]


def test_distinct_dirs_distinct_keys(tmp_path):
    a = Identity.load_or_create(tmp_path / "a")
    b = Identity.load_or_create(tmp_path / "b")
    assert a.public_key != b.public_key


def test_key_file_private_even_with_stale_world_readable_temp(tmp_path):
    """A temp file left by a crash (or planted) must not make the key world-readable."""
    (tmp_path / "node.tmp").write_text("stale")
    os.chmod(tmp_path / "node.tmp", 0o644)
    Identity.load_or_create(tmp_path)
    assert mode(tmp_path / KEY_FILE) == 0o600


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_by_others_refused(tmp_path, bad_mode):
    Identity.load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, bad_mode)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / KEY_FILE) in msg
    assert "chmod 600" in msg


@pytest.mark.parametrize(
    "content",
    [b"", b"zz" * 32, b"ab" * 31, b"ab" * 33, b"not a key at all\n"],
)
def test_corrupt_key_file(tmp_path, content):
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="64-hex-digit"):
        Identity.load_or_create(tmp_path)


def test_binary_key_file_is_identity_error(tmp_path):
    path = tmp_path / KEY_FILE
    path.write_bytes(b"\xff\xfe" + os.urandom(30))
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError):
        Identity.load(path)


def test_missing_key_file_on_load(tmp_path):
    with pytest.raises(IdentityError, match="cannot read key file"):
        Identity.load(tmp_path / "absent.key")


def test_identity_error_is_prime_error():
    assert issubclass(IdentityError, PrimeError)


def test_network_id_derived_from_public_key():
    ident = Identity.from_seed(b"k" * 32, "name-is-cosmetic")
    assert ident.network_id == hashlib.sha256(ident.public_key).hexdigest()[:16]
    assert ident.network_id == network_id(ident.public_key)
    assert len(ident.network_id) == 16
    assert Identity.from_seed(b"k" * 32, "other").network_id == ident.network_id
    assert Identity.from_seed(b"j" * 32).network_id != ident.network_id
    assert ident.public_key_hex == ident.public_key.hex()


def test_sign_verify():
    ident = Identity.from_seed(b"s" * 32)
    sig = ident.sign(b"msg")
    verify(ident.public_key, b"msg", sig)
    with pytest.raises(SignatureError):
        verify(ident.public_key, b"msh", sig)
    with pytest.raises(SignatureError):
        verify(Identity.from_seed(b"t" * 32).public_key, b"msg", sig)
    with pytest.raises(SignatureError, match="length"):
        verify(ident.public_key[:31], b"msg", sig)
    with pytest.raises(SignatureError, match="length"):
        verify(ident.public_key, b"msg", sig[:63])
