# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Registry access on the controller, through skopeo (the controller dependency in meta/ee-bindep.txt).

Three things are asked of a registry: a manifest's bytes (``skopeo inspect --raw``), an image's
blobs by digest (``skopeo copy --preserve-digests docker://... dir:DIR``), everything read from them
checked against digests by :mod:`.image`, and an image by digest as a ``docker save`` archive
(``skopeo copy docker://...@DIGEST docker-archive:FILE:NAME``, checked by :mod:`.archive`). Credentials go to skopeo in an auth file (mode 0600) in a
private temporary directory, never on its command line.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.image import ImageError, ImageRef, Manifest, is_index, load_json, select_platform, sha256_digest

#: a registry's stderr kept in a message
DETAIL = 600
_LOGRUS = re.compile(r'^time="[^"]*" level=\w+ msg="(?P<msg>(?:[^"\\]|\\.)*)"$')


def skopeo_message(stderr: str) -> str:
    """skopeo's error without its log framing (``time="..." level=fatal msg="..."``)."""
    lines = []
    for line in stderr.strip().splitlines():
        match = _LOGRUS.match(line.strip())
        lines.append(re.sub(r'\\(.)', r'\1', match.group("msg")) if match else line.strip())
    return " ".join(line for line in lines if line)[-DETAIL:]


#: how the device scripts word a failed registry login (scripts/_lib.sh osfleet_registry_login)
LOGIN_FAILED = "login to the registry "


@contextlib.contextmanager
def login_refusal() -> t.Iterator[None]:
    """A failed registry login on the device is the step's reason as the device words it (registry,
    HTTP status, the tool's reason), without the framing of a failed script."""
    try:
        yield
    except DeviceError as exc:
        text = str(exc)
        at = text.find(LOGIN_FAILED)
        if at < 0:
            raise
        raise DeviceError(text[at:], **exc.data) from None


def auth_config(registries: t.Iterable[str], username: str, password: str) -> dict[str, t.Any]:
    """A containers-auth.json / docker ``config.json`` document with these credentials for each registry."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"auths": {registry: {"auth": token} for registry in registries}}


@dataclass(frozen=True)
class RegistryAuth:
    """The credentials of a release's registries (options ``registry_username``/``registry_password``,
    doc fragment ``osfleet.hup.release.registry_auth``), for the registries ``registries``."""

    username: str
    password: str = dataclasses.field(repr=False)
    registries: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], registries: t.Iterable[str]) -> RegistryAuth | None:
        """The credentials the task gives, None without ``registry_username``. Raises ValueError
        for credentials that cannot be sent as they are (Basic auth: no ``:`` in the user name; the
        password goes on one line of a script's standard input)."""
        username, password = args.get("registry_username"), args.get("registry_password")
        if username is None and password is None:
            return None
        if not username or password is None:
            raise ValueError("registry_username and registry_password go together")
        if ":" in username or any(c in username for c in "\r\n"):
            raise ValueError("registry_username cannot contain ':' or a line break")
        if not password or any(c in password for c in "\r\n"):
            raise ValueError("registry_password must be one line, not empty")
        return cls(username, password, tuple(dict.fromkeys(r for r in registries if r)))

    def device_input(self) -> dict[str, t.Any]:
        """What a device script takes on its standard input (never on its command line)."""
        return {"username": self.username, "password": self.password, "registries": list(self.registries)}


@dataclass
class Skopeo:
    """How to reach one registry with skopeo."""

    executable: str = "skopeo"
    tls_verify: bool = True
    auth_file: str | None = None
    cert_dir: str | None = None
    timeout: int = 300

    @classmethod
    def with_credentials(cls, workdir: str, registry: str | t.Sequence[str], username: str | None, password: str | None,
                         **kwargs: t.Any) -> Skopeo:
        """A Skopeo whose auth file (in ``workdir``) holds ``username``/``password`` for ``registry`` (one or several)."""
        skopeo = cls(**kwargs)
        if username is not None:
            path = os.path.join(workdir, "auth.json")
            registries = [registry] if isinstance(registry, str) else list(registry)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(auth_config(registries, username, password or ""), handle)
            skopeo.auth_file = path
        return skopeo

    def _options(self, prefix: str = "") -> list[str]:
        argv = [f"--{prefix}tls-verify={'true' if self.tls_verify else 'false'}"]
        if self.auth_file:
            argv.append(f"--{prefix}authfile={self.auth_file}")
        if self.cert_dir:
            argv.append(f"--{prefix}cert-dir={self.cert_dir}")
        return argv

    def _run(self, argv: list[str], what: str) -> bytes:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        try:
            proc = subprocess.run([self.executable, *argv], capture_output=True, timeout=self.timeout, check=False, env=env,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ImageError(f"{what}: {self.executable} is not installed on the controller (package skopeo)") from None
        except subprocess.TimeoutExpired:
            raise ImageError(f"{what}: skopeo did not finish within {self.timeout} s") from None
        if proc.returncode != 0:
            detail = skopeo_message(proc.stderr.decode("utf-8", "replace"))
            raise ImageError(f"{what}: skopeo failed (exit {proc.returncode}): {detail}")
        return proc.stdout

    def manifest_bytes(self, ref: str) -> bytes:
        """The raw manifest (or index) that ``ref`` names."""
        return self._run(["inspect", "--raw", *self._options(), f"docker://{ref}"], f"cannot read the manifest of {ref}")

    def copy_to_dir(self, ref: str, dest: str) -> None:
        """Copy the image ``ref`` (by digest) unchanged into ``dest`` (skopeo's ``dir:`` layout)."""
        self._run(["copy", "--quiet", "--preserve-digests", *self._options("src-"), f"docker://{ref}", f"dir:{dest}"],
                  f"cannot copy {ref} from its registry")

    def copy_to_archive(self, ref: str, dest: str, name: str) -> None:
        """Copy the image ``ref`` (by digest: skopeo checks the manifest against it, and every blob)
        into the docker-archive file ``dest`` (``docker save``'s format), named ``name`` (REPO:TAG)."""
        self._run(["copy", "--quiet", *self._options("src-"), f"docker://{ref}", f"docker-archive:{dest}:{name}"],
                  f"cannot copy {ref} from its registry")


def resolve_manifest(skopeo: Skopeo, ref: ImageRef, arch: str | None = None) -> Manifest:
    """The single-platform manifest ``ref`` names (an index: the entry for ``arch``), checked against a digest in ``ref``."""
    raw = skopeo.manifest_bytes(str(ref))
    if ref.digest and sha256_digest(raw) != ref.digest:
        raise ImageError(f"the registry answered {ref} with a manifest whose digest is {sha256_digest(raw)}")
    data = load_json(raw, f"the manifest of {ref}")
    if is_index(data):
        digest = select_platform(data, arch, str(ref))
        raw = skopeo.manifest_bytes(ref.by_digest(digest))
        if sha256_digest(raw) != digest:
            raise ImageError(f"the registry answered {ref.by_digest(digest)} with a manifest whose digest is {sha256_digest(raw)}")
    return Manifest.parse(raw, f"the manifest of {ref}")


def fetch_blobs(skopeo: Skopeo, ref: ImageRef, manifest: Manifest, dest: str) -> str:
    """Copy the image of ``manifest`` into ``dest``; its manifest there must be byte for byte the one resolved."""
    skopeo.copy_to_dir(ref.by_digest(manifest.digest), dest)
    try:
        with open(os.path.join(dest, "manifest.json"), "rb") as handle:
            copied = handle.read()
    except OSError as exc:
        raise ImageError(f"skopeo copied {ref} without a manifest: {exc}") from None
    if sha256_digest(copied) != manifest.digest:
        raise ImageError(f"skopeo copied {ref} with a manifest whose digest is {sha256_digest(copied)}, not {manifest.digest}")
    return dest
