"""Every refusal names its problem and imports nothing; a fresh bundle is a valid bag."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from datetime import timedelta

import bagit
import pytest

from ferry.bundle import Compression, Payload, PayloadFile, verify_bundle
from ferry.keys import TrustStore, load_identity
from ferry.ledger import ImportStatus, Receiver, import_bundle
from ferry.outbox import Sender, export_payload
from govbus.errors import BundleRefused


def deliver(site, exported):
    target = site.inbox / exported.path.name
    shutil.copytree(exported.path, target)
    return target


def refused(site, path, pattern, receiver=None):
    """Import must raise BundleRefused matching ``pattern`` and leave no rows and no ledger."""
    with pytest.raises(BundleRefused, match=pattern) as info:
        import_bundle(site.engine, path, receiver=receiver or site.receiver, load=site.load)
    assert site.rows() == []
    assert site.ledger() == []
    assert not site.receiver.staging.exists() or not any(site.receiver.staging.iterdir())
    return str(info.value)


def flip(path, offset=100):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def rehash_manifests(bundle, sign_with=None):
    """What a tamperer with `bagit` does: recompute manifests; optionally re-sign (a key holder)."""
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  data/{p.name}\n"
        for p in sorted((bundle / "data").iterdir())
    ]
    (bundle / "manifest-sha256.txt").write_text("".join(lines))
    tags = ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "envelope.json")
    tagmanifest = "".join(
        f"{hashlib.sha256((bundle / n).read_bytes()).hexdigest()}  {n}\n" for n in tags
    )
    (bundle / "tagmanifest-sha256.txt").write_text(tagmanifest)
    if sign_with is not None:
        from ferry.bundle import _SIG_CONTEXT

        sig = sign_with.signing_key.sign(_SIG_CONTEXT + tagmanifest.encode())
        (bundle / "envelope.sig").write_bytes(base64.b64encode(sig) + b"\n")


@pytest.fixture
def bundle(site):
    return deliver(site, export_payload(site.sender, site.payload(rows=20_000, files=2)))


def test_fresh_bundle_validates_with_third_party_bagit_without_keys(bundle):
    bag = bagit.Bag(str(bundle))
    assert bag.validate(processes=1) is True
    assert (
        bag.info["Payload-Oxum"]
        == f"{sum(p.stat().st_size for p in (bundle / 'data').iterdir())}.2"
    )
    assert sorted(bag.payload_files()) == ["data/0001.bin", "data/0002.bin"]
    assert bag.version_info == (1, 0)


def test_payload_is_ciphertext_under_opaque_names(site, bundle):
    names = sorted(p.name for p in (bundle / "data").iterdir())
    assert names == ["0001.bin", "0002.bin"]
    raw = b"".join(p.read_bytes() for p in (bundle / "data").iterdir())
    assert b"PAR1" not in raw and b"person-" not in raw


def test_flipped_ciphertext_byte(site, bundle):
    flip(bundle / "data" / "0002.bin", 5000)
    msg = refused(site, bundle, "BagIt fixity failed")
    assert "data/0002.bin" in msg


def test_flipped_byte_with_recomputed_manifests_fails_signature(site, bundle):
    flip(bundle / "data" / "0001.bin", 5000)
    rehash_manifests(bundle)
    assert bagit.Bag(str(bundle)).is_valid()  # BagIt alone is fooled; the signature is not
    refused(site, bundle, r"signature by [0-9a-f]{32} does not verify over tagmanifest-sha256.txt")


def test_flipped_byte_resigned_by_sender_fails_authentication(site, bundle):
    # Only the sender's own key could do this; the AEAD still catches the change.
    flip(bundle / "data" / "0001.bin", 5000)
    envelope = json.loads((bundle / "envelope.json").read_text())
    digest = hashlib.sha256((bundle / "data" / "0001.bin").read_bytes()).hexdigest()
    envelope["files"][0]["hash"] = f"sha256:{digest}"
    (bundle / "envelope.json").write_text(json.dumps(envelope))
    rehash_manifests(bundle, sign_with=site.sender_id)
    refused(site, bundle, r"data/0001.bin: chunk 0 failed authentication")


def test_edited_manifest(site, bundle):
    manifest = bundle / "manifest-sha256.txt"
    manifest.write_text(manifest.read_text().replace("data/0001.bin", "data/0001.bin "))
    refused(site, bundle, "manifest-sha256.txt was edited")


def test_edited_envelope(site, bundle):
    env = json.loads((bundle / "envelope.json").read_text())
    env["files"][0]["records"] = 1
    (bundle / "envelope.json").write_text(json.dumps(env, indent=1, sort_keys=True) + "\n")
    refused(site, bundle, "envelope.json was edited")


def test_truncated_file(site, bundle):
    target = bundle / "data" / "0001.bin"
    size = target.stat().st_size
    os.truncate(target, size - 1000)
    refused(
        site,
        bundle,
        rf"data/0001.bin is {size - 1000} bytes, the envelope declares {size}: truncated",
    )


def test_missing_file(site, bundle):
    (bundle / "data" / "0002.bin").unlink()
    refused(site, bundle, "missing file data/0002.bin")


def test_missing_tag_file(site, bundle):
    (bundle / "envelope.sig").unlink()
    refused(site, bundle, "missing file envelope.sig")


def test_extra_payload_file(site, bundle):
    shutil.copy(bundle / "data" / "0001.bin", bundle / "data" / "0003.bin")
    refused(site, bundle, "extra file data/0003.bin")


def test_extra_top_level_file(site, bundle):
    (bundle / "notes.txt").write_text("hello")
    refused(site, bundle, "unexpected file 'notes.txt'")


def test_payload_name_outside_pattern(site, bundle):
    (bundle / "data" / "0002.bin").rename(bundle / "data" / "rows.parquet")
    refused(site, bundle, "unexpected file 'data/rows.parquet'")


def test_fetch_txt(site, bundle):
    (bundle / "fetch.txt").write_text("https://example.org/x 100 data/0003.bin\n")
    refused(site, bundle, "fetch.txt present")


def test_dot_dot_name(site, bundle):
    manifest = bundle / "manifest-sha256.txt"
    manifest.write_text(manifest.read_text().replace("data/0002.bin", "data/../envelope.json"))
    refused(site, bundle, r"manifest-sha256.txt lists a path with '\.\.'")


def test_absolute_name(site, bundle):
    manifest = bundle / "manifest-sha256.txt"
    manifest.write_text(manifest.read_text().replace("data/0002.bin", "/etc/passwd"))
    refused(site, bundle, "manifest-sha256.txt lists an absolute path '/etc/passwd'")


def test_symlinked_payload_file(site, bundle, tmp_path):
    target = bundle / "data" / "0001.bin"
    shutil.move(target, tmp_path / "elsewhere.bin")
    target.symlink_to(tmp_path / "elsewhere.bin")
    refused(site, bundle, "data/0001.bin is a symbolic link")


def test_symlinked_tag_file(site, bundle, tmp_path):
    shutil.move(bundle / "envelope.json", tmp_path / "envelope.json")
    (bundle / "envelope.json").symlink_to(tmp_path / "envelope.json")
    refused(site, bundle, "envelope.json is a symbolic link")


def test_other_recipient(site):
    sender = Sender(site.sender.home, site.sender_id, (site.other_id.public,))
    path = deliver(site, export_payload(sender, site.payload()))
    refused(
        site, path, rf"not addressed to this importer: recipients are \['{site.other_id.key_id}'\]"
    )


def test_unknown_signer(site, identities):
    intruder = load_identity(identities["intruder"])
    sender = Sender(site.tmp / "intruder-home", intruder, (site.receiver_id.public,))
    path = deliver(site, export_payload(sender, site.payload()))
    refused(site, path, f"signed by unknown key {intruder.key_id}")


def test_other_channel(site):
    path = deliver(site, export_payload(site.sender, site.payload(channel="ch-b")))
    refused(site, path, r"bundle is for channel 'ch-b'; this importer accepts \['ch-a'\]")


def test_expired(site):
    from datetime import UTC, datetime

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sender = Sender(site.sender.home, site.sender_id, site.sender.recipients, ttl=timedelta(days=2))
    path = deliver(site, export_payload(sender, site.payload(), now=t0))
    with pytest.raises(BundleRefused, match=r"expired at 2026-01-03T00:00:00.000000Z"):
        import_bundle(
            site.engine, path, receiver=site.receiver, load=site.load, now=t0 + timedelta(days=3)
        )
    assert site.rows() == [] and site.ledger() == []


def _zeros_payload(site, size):
    path = site.tmp / "zeros.bin"
    with open(path, "wb") as fh:
        fh.truncate(size)
    return Payload("R-BOMB", "sha256:00", (PayloadFile(path, 0),), "dept.x", "gov.cloud", "ch-a")


def test_decompression_over_declared_limit(site):
    sender = Sender(
        site.sender.home, site.sender_id, site.sender.recipients, compression=Compression.ZSTD
    )
    exported = export_payload(sender, _zeros_payload(site, 50_000_000))
    assert exported.envelope.files[0].size < 100_000  # a compression bomb: 50 MB in a few KB
    receiver = Receiver(**{**site.receiver.__dict__, "max_plain_bytes": 5_000_000})
    refused(
        site,
        deliver(site, exported),
        "payload declares 50000000 bytes after decompression, over the limit of 5000000",
        receiver,
    )


def test_decompression_over_limit_while_streaming(site):
    # A sender that lies about the size in a signed envelope is stopped by the running count.
    sender = Sender(
        site.sender.home, site.sender_id, site.sender.recipients, compression=Compression.ZSTD
    )
    path = deliver(site, export_payload(sender, _zeros_payload(site, 50_000_000)))
    env = json.loads((path / "envelope.json").read_text())
    env["files"][0]["plain_size"] = 2_000_000
    (path / "envelope.json").write_text(json.dumps(env, indent=1, sort_keys=True) + "\n")
    rehash_manifests(path, sign_with=site.sender_id)
    receiver = Receiver(**{**site.receiver.__dict__, "max_plain_bytes": 2_000_000})
    refused(site, path, "data/0001.bin: decompresses past the limit of 2000000 bytes", receiver)
    assert not (receiver.staging / env["bundle_id"]).exists()


def test_rsa_oaep_recipient_round_trip(site, identities):
    rsa_id = load_identity(identities["rsa-receiver"])
    sender = Sender(site.sender.home, site.sender_id, (rsa_id.public, site.receiver_id.public))
    exported = export_payload(sender, site.payload(rows=7))
    assert exported.envelope.recipients[rsa_id.key_id]["alg"] == "rsa-oaep-sha256"
    receiver = Receiver(
        rsa_id, TrustStore.of(site.sender_id.public), site.tmp / "rsa-home", {"ch-a"}
    )

    result = import_bundle(site.engine, deliver(site, exported), receiver=receiver, load=site.load)

    assert result.status is ImportStatus.IMPORTED
    assert [r[0] for r in site.rows()] == list(range(1, 8))


def test_verify_checks_names_before_signature(site, bundle):
    # Both wrong: the name problem is reported, proving the order of the checks.
    (bundle / "envelope.sig").write_text("AAAA\n")
    (bundle / "data" / "0001.bin").rename(bundle / "data" / "x.bin")
    with pytest.raises(BundleRefused, match="unexpected file 'data/x.bin'"):
        verify_bundle(bundle, identity=site.receiver_id, trust=site.receiver.trust)
