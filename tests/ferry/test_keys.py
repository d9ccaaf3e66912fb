"""Key files, key ids and the trust store."""

from __future__ import annotations

import json
import stat

import pytest

from ferry.keys import KeyFileError, TrustStore, keygen, load_identity, load_public


def test_keygen_writes_private_keys_0600_and_stable_key_id(tmp_path):
    public = keygen(tmp_path / "site", "dept-a")

    for name in ("signing.pem", "encryption.pem"):
        assert stat.S_IMODE((tmp_path / "site" / name).stat().st_mode) == 0o600
    assert len(public.key_id) == 32
    assert load_identity(tmp_path / "site").key_id == public.key_id
    assert load_public(tmp_path / "site" / "public.json").key_id == public.key_id
    assert public.encryption_kind == "x25519"


def test_keygen_refuses_to_overwrite(tmp_path):
    keygen(tmp_path / "site", "a")
    with pytest.raises(KeyFileError, match="already holds ferry keys"):
        keygen(tmp_path / "site", "b")


def test_public_document_with_swapped_key_is_refused(tmp_path):
    a = keygen(tmp_path / "a", "a")
    b = keygen(tmp_path / "b", "b")
    doc = a.to_json()
    doc["encryption_key"] = b.to_json()["encryption_key"]
    (tmp_path / "forged.json").write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=f"key_id '{a.key_id}' does not match its public keys"):
        load_public(tmp_path / "forged.json")


def test_trust_store_from_directory_and_file(tmp_path):
    a = keygen(tmp_path / "a", "a")
    b = keygen(tmp_path / "b", "b", encryption="rsa")
    (tmp_path / "trusted").mkdir()
    store = TrustStore()
    store.pin(a, tmp_path / "trusted")
    TrustStore().pin(b, tmp_path / "trust.json")

    assert list(TrustStore.load(tmp_path / "trusted")) == [a.key_id]
    loaded = TrustStore.load(tmp_path / "trust.json")
    assert list(loaded) == [b.key_id]
    assert loaded[b.key_id].encryption_kind == "rsa"
    assert loaded.get(a.key_id) is None
