# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading an OS image from its blobs (plugin_utils.image): references, manifests, sizes, the image
root (whiteouts, links resolved inside it), blob digests checked before reading."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import typing as t
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.image import (
    MEDIA_OCI_INDEX,
    BlobStore,
    ImageError,
    ImageRef,
    Manifest,
    balena_arch,
    inspect_image,
    parse_reference,
    select_platform,
)

OS_RELEASE = b'ID="balena-os"\nVERSION="2.113.0"\nSLUG="genericx86-64-ext"\nMACHINE="genericx86-64-ext"\n'
SUP_CONF = b"SUPERVISOR_IMAGE=osfleet/balena-supervisor\nSUPERVISOR_VERSION=v14.11.2\n"

# a layer member: (name, kind, data or link target); kind: f(ile), d(ir), l (symlink), h(ard link)
Member = tuple[str, str, t.Union[bytes, str]]


def layer_bytes(members: list[Member], compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                tar.addfile(info)
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
                tar.addfile(info)
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


class Image:
    """An image written into a skopeo ``dir:`` layout (blobs named by hex digest)."""

    def __init__(self, root: Path, layers: list[list[Member]], arch: str = "amd64", variant: str | None = None,
                 config_extra: dict[str, t.Any] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        blobs = [layer_bytes(layer) for layer in layers]
        config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64] * len(blobs)},
                  **({"variant": variant} if variant else {}), **(config_extra or {})}
        self.config = json.dumps(config).encode()
        descs = [self.put(blob, "application/vnd.oci.image.layer.v1.tar+gzip") for blob in blobs]
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": self.put(self.config, "application/vnd.oci.image.config.v1+json"), "layers": descs}
        self.raw = json.dumps(manifest).encode()
        (root / "manifest.json").write_bytes(self.raw)
        self.layer_sizes = [len(blob) for blob in blobs]

    def put(self, data: bytes, media: str) -> dict[str, t.Any]:
        hexd = hashlib.sha256(data).hexdigest()
        (self.root / hexd).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{hexd}", "size": len(data)}

    @property
    def manifest(self) -> Manifest:
        return Manifest.parse(self.raw)

    def inspect(self) -> t.Any:
        return inspect_image(BlobStore(self.root), self.manifest)


def os_layer(*extra: Member) -> list[Member]:
    return [("etc", "d", b""), ("etc/os-release", "f", OS_RELEASE), ("etc/balena-supervisor", "d", b""),
            ("etc/balena-supervisor/supervisor.conf", "f", SUP_CONF), *extra]


# --- references --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:5000/osfleet/genericx86-64-ext:2.113.0", ImageRef("127.0.0.1:5000", "osfleet/genericx86-64-ext", "2.113.0")),
    ("docker://registry.example.com/os/x:6.0.24_rev1", ImageRef("registry.example.com", "os/x", "6.0.24_rev1")),
    ("localhost/a/b@sha256:" + "a" * 64, ImageRef("localhost", "a/b", None, "sha256:" + "a" * 64)),
    ("reg:5000/a:t@sha256:" + "b" * 64, ImageRef("reg:5000", "a", "t", "sha256:" + "b" * 64)),
    ("busybox", ImageRef("docker.io", "library/busybox", "latest")),
    ("balena/amd64-supervisor:v14.11.2", ImageRef("docker.io", "balena/amd64-supervisor", "v14.11.2")),
])
def test_references_are_parsed(text: str, want: ImageRef) -> None:
    assert parse_reference(text) == want


@pytest.mark.parametrize("text", ["", "Reg/Upper:tag", "reg:5000/a:bad tag", "reg/a@sha256:short", "reg/a/../b:1"])
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(ImageError, match="image reference"):
        parse_reference(text)


def test_an_index_resolves_to_the_platform_of_the_arch() -> None:
    index = {"mediaType": MEDIA_OCI_INDEX, "manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "3" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}
    assert select_platform(index, "aarch64", "x") == "sha256:" + "2" * 64
    with pytest.raises(ImageError, match=r"multi-platform index \(aarch64, amd64\): name the architecture"):
        select_platform(index, None, "x")
    with pytest.raises(ImageError, match="without a linux image for armv7hf"):
        select_platform(index, "armv7hf", "x")
    assert (balena_arch("arm", "v7"), balena_arch("arm64"), balena_arch("riscv64")) == ("armv7hf", "aarch64", "riscv64")


# --- the image -----------------------------------------------------------------------------------

def test_an_image_is_described_from_its_blobs(tmp_path: Path) -> None:
    base = [("usr", "d", b""), ("usr/bin", "d", b""), ("usr/bin/busybox", "f", b"x" * 1000), ("bin", "l", "usr/bin"),
            ("usr/bin/sh", "h", "usr/bin/busybox")]
    image = Image(tmp_path, [base, os_layer(("usr/lib", "d", b""), ("usr/lib/big", "f", b"y" * 500))])
    facts = image.inspect()
    assert facts.digest == "sha256:" + hashlib.sha256(image.raw).hexdigest()
    assert facts.image_id == "sha256:" + hashlib.sha256(image.config).hexdigest()
    assert facts.size == len(image.raw) + len(image.config) + sum(image.layer_sizes)
    assert facts.layers_size == sum(image.layer_sizes)
    # regular files and symlink targets, a hard link not again
    assert facts.size_unpacked == 1000 + len("usr/bin") + len(OS_RELEASE) + len(SUP_CONF) + 500
    assert facts.arch == "amd64"
    assert facts.os_release["VERSION"] == "2.113.0" and facts.os_release["SLUG"] == "genericx86-64-ext"
    assert facts.supervisor_version == "14.11.2"


def test_links_are_resolved_inside_the_image_root(tmp_path: Path) -> None:
    """os-release as on most distributions (etc/os-release -> ../usr/lib/os-release), an absolute
    link, and a link that tries to climb out of the root: it stays at the image root."""
    layer = [("usr", "d", b""), ("usr/lib", "d", b""), ("usr/lib/os-release", "f", OS_RELEASE), ("etc", "d", b""),
             ("etc/os-release", "l", "../../../../usr/lib/os-release"),
             ("etc/balena-supervisor", "l", "/usr/share/sup"), ("usr/share", "d", b""), ("usr/share/sup", "d", b""),
             ("usr/share/sup/supervisor.conf", "l", "../../../../../../etc/real.conf"), ("etc/real.conf", "f", SUP_CONF)]
    facts = Image(tmp_path, [layer]).inspect()
    assert facts.os_release["VERSION"] == "2.113.0"
    assert facts.supervisor_version == "14.11.2"


def test_a_link_out_of_the_root_never_reads_the_controller(tmp_path: Path) -> None:
    host_file = tmp_path / "host-os-release"
    host_file.write_bytes(b'VERSION="9.9.9"\n')
    layer = [("etc", "d", b""), ("etc/os-release", "l", str(host_file))]
    with pytest.raises(ImageError, match="no /etc/os-release"):
        Image(tmp_path / "img", [layer]).inspect()


def test_a_link_loop_is_refused(tmp_path: Path) -> None:
    layer = [("etc", "d", b""), ("etc/os-release", "l", "a"), ("etc/a", "l", "os-release")]
    with pytest.raises(ImageError, match="more than 40 symlinks"):
        Image(tmp_path, [layer]).inspect()


def test_whiteouts_hide_lower_files(tmp_path: Path) -> None:
    """An upper layer removes a lower os-release (.wh.) and a whole directory (opaque); its own
    os-release is the one read."""
    lower = [*os_layer(), ("etc/balena-supervisor/extra", "f", b"1")]
    upper = [("etc", "d", b""), ("etc/.wh.os-release", "f", b""), ("etc/balena-supervisor", "d", b""),
             ("etc/balena-supervisor/.wh..wh..opq", "f", b"")]
    with pytest.raises(ImageError, match="no /etc/os-release"):
        Image(tmp_path / "a", [lower, upper]).inspect()
    newer = [*upper, ("etc/os-release", "f", OS_RELEASE.replace(b"2.113.0", b"2.114.1"))]
    facts = Image(tmp_path / "b", [lower, newer]).inspect()
    assert facts.os_release["VERSION"] == "2.114.1"
    assert facts.supervisor_version is None  # the opaque directory hid supervisor.conf


def test_a_hard_link_reads_the_file_it_links_to(tmp_path: Path) -> None:
    layer = [("usr", "d", b""), ("usr/os-release.real", "f", OS_RELEASE), ("etc", "d", b""), ("etc/os-release", "h", "usr/os-release.real")]
    facts = Image(tmp_path, [layer]).inspect()
    assert facts.os_release["VERSION"] == "2.113.0"
    assert facts.size_unpacked == len(OS_RELEASE)


def test_a_blob_that_is_not_its_digest_is_refused_before_it_is_read(tmp_path: Path) -> None:
    image = Image(tmp_path, [os_layer()])
    layer = image.manifest.layers[0]
    path = tmp_path / layer.digest.split(":")[1]
    path.write_bytes(layer_bytes(os_layer(("evil", "f", b"x"))))
    with pytest.raises(ImageError, match=r"layer 0 sha256:[0-9a-f]{64}: the blob has sha256 .* refusing to read it"):
        image.inspect()


def test_a_member_outside_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="outside the image root"):
        Image(tmp_path, [[*os_layer(), ("../etc/passwd", "f", b"x")]]).inspect()


def test_an_image_without_os_release_is_not_an_os_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no /etc/os-release"):
        Image(tmp_path, [[("bin", "d", b""), ("bin/app", "f", b"x")]]).inspect()


def test_an_oversized_os_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="more than 65536; refusing it"):
        Image(tmp_path, [[("etc", "d", b""), ("etc/os-release", "f", b"#" * 70000)]]).inspect()


def test_manifests_that_are_not_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="multi-platform index"):
        Manifest.parse(json.dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": []}).encode())
    with pytest.raises(ImageError, match="an OCI or Docker v2 image manifest is needed"):
        Manifest.parse(json.dumps({"schemaVersion": 1, "name": "x"}).encode())
    with pytest.raises(ImageError, match="not JSON"):
        Manifest.parse(b"<html>")
    image = Image(tmp_path, [os_layer()])
    doc = json.loads(image.raw)
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    with pytest.raises(ImageError, match=r"zstd'; only tar and gzip'd tar layers are read"):
        inspect_image(BlobStore(tmp_path), Manifest.parse(json.dumps(doc).encode()))


def test_an_oci_layout_is_a_blob_store(tmp_path: Path) -> None:
    image = Image(tmp_path / "flat", [os_layer()])
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for path in (tmp_path / "flat").iterdir():
        if path.name != "manifest.json":
            (blobs / path.name).write_bytes(path.read_bytes())
    assert inspect_image(BlobStore(tmp_path / "oci"), image.manifest) == image.inspect()


def test_a_hard_link_to_a_lower_layer_reads_that_layer(tmp_path: Path) -> None:
    lower = [("usr", "d", b""), ("usr/os-release", "f", OS_RELEASE)]
    upper = [("etc", "d", b""), ("etc/os-release", "h", "usr/os-release")]
    facts = Image(tmp_path, [lower, upper]).inspect()
    assert facts.os_release["VERSION"] == "2.113.0"


def test_one_store_describes_images_that_share_layers(tmp_path: Path) -> None:
    """The lab describes all its releases from one OCI layout: a shared base layer is read once, and
    each image still gets its own files and sizes."""
    base = [("usr", "d", b""), ("usr/bin", "d", b""), ("usr/bin/busybox", "f", b"x" * 1000)]
    first = Image(tmp_path, [base, os_layer()])
    newer = [(name, kind, OS_RELEASE.replace(b"2.113.0", b"2.114.1") if name == "etc/os-release" else data) for name, kind, data in os_layer()]
    second = Image(tmp_path, [base, newer])
    store = BlobStore(tmp_path)
    one, two = inspect_image(store, first.manifest), inspect_image(store, second.manifest)
    assert (one.os_release["VERSION"], two.os_release["VERSION"]) == ("2.113.0", "2.114.1")
    assert one.size_unpacked == 1000 + len(OS_RELEASE) + len(SUP_CONF)
    assert two.size_unpacked == one.size_unpacked
    assert (one, two) == (first.inspect(), second.inspect())
