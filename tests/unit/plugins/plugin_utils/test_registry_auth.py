# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry credentials (issue 9): the options' checks, the auth documents, and the device scripts
against a local registry with htpasswd auth: a failed login fails before the cache is touched,
naming the registry and the HTTP status; a pull with the credentials works; the auth file is gone
after; the password is never on a command line of the scripts."""

from __future__ import annotations

import base64
import json
import subprocess
import typing as t
from pathlib import Path

import bcrypt
import pytest
from test_writer import SHELLS, free_port, make_layout, release_layers, run_call, serve_registry

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell as scripts
from ansible_collections.osfleet.hup.plugins.plugin_utils import writer as w
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import argspec_from_doc
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import RegistryAuth, Skopeo, auth_config
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import Target, registry_auth
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import FetchAttempt, FetchPlan

USER, PASSWORD = "fleet", "s3cret 'with' \"quotes\" $(reboot) \\ end"


def test_no_credentials_is_none() -> None:
    assert RegistryAuth.from_args({"registry_username": None, "registry_password": None}, ["r:1"]) is None
    assert RegistryAuth.from_args({}, ["r:1"]) is None


@pytest.mark.parametrize("args, why", [
    ({"registry_username": "u"}, "go together"),
    ({"registry_password": "p"}, "go together"),
    ({"registry_username": "a:b", "registry_password": "p"}, "cannot contain ':'"),
    ({"registry_username": "u", "registry_password": "two\nlines"}, "one line"),
    ({"registry_username": "u", "registry_password": ""}, "one line"),
])
def test_unusable_credentials_are_refused(args: dict[str, t.Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        RegistryAuth.from_args(args, ["r:1"])


def test_registry_auth_names_each_registry_once_and_hides_the_password() -> None:
    auth = RegistryAuth.from_args({"registry_username": USER, "registry_password": PASSWORD}, ["a:1", "b:2", "a:1", ""])
    assert auth is not None and auth.registries == ("a:1", "b:2")
    assert PASSWORD not in repr(auth)
    assert auth.device_input() == {"username": USER, "password": PASSWORD, "registries": ["a:1", "b:2"]}


def test_registry_auth_of_a_target_is_a_plan_error() -> None:
    target = t.cast(Target, type("T", (), {"registries": {"primary": "a:1", "fallback": "b:2"}})())
    assert registry_auth({"registry_username": USER, "registry_password": "p"}, target).registries == ("a:1", "b:2")
    with pytest.raises(PlanError, match="go together"):
        registry_auth({"registry_username": USER}, target)


def test_auth_config_is_a_docker_config() -> None:
    doc = auth_config(["a:1", "b:2"], USER, PASSWORD)
    assert set(doc["auths"]) == {"a:1", "b:2"}
    assert base64.b64decode(doc["auths"]["a:1"]["auth"]).decode() == f"{USER}:{PASSWORD}"


def test_the_controller_auth_file_is_private(tmp_path: Path) -> None:
    skopeo = Skopeo.with_credentials(str(tmp_path), ["a:1", "b:2"], USER, PASSWORD)
    path = Path(t.cast(str, skopeo.auth_file))
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())["auths"]) == {"a:1", "b:2"}
    assert all(PASSWORD not in part for part in skopeo._options("src-"))  # pylint: disable=protected-access


@pytest.mark.parametrize("module", ["fetch", "rootfs"])
def test_the_password_option_is_no_log(module: str) -> None:
    doc = __import__(f"ansible_collections.osfleet.hup.plugins.modules.{module}", fromlist=["DOCUMENTATION"]).DOCUMENTATION
    spec = argspec_from_doc(doc)
    assert spec["registry_password"]["no_log"] is True
    assert "no_log" not in spec["registry_username"]


def test_the_password_goes_on_stdin_never_on_the_command_line() -> None:
    auth = RegistryAuth(USER, PASSWORD, ("r:1",))
    plan = FetchPlan(done=False, cache_dir="/c", attempts=[FetchAttempt("registry", "r:1/x@sha256:" + "a" * 64, "sha256:" + "a" * 64, "t")])
    for call in (w.ExportWriter().fetch_script(plan, True, auth), w.HostappWriter.login_script(True, auth)):
        argv, stdin = scripts.load(call.script).argv(**call.params)
        assert all(PASSWORD not in part for part in argv)
        assert stdin is not None and json.loads(stdin)["auth" if call.script == "fetch" else "password"] is not None


# --- against a registry with htpasswd auth -----------------------------------------------------------

@pytest.fixture(name="private", scope="module")
def fixture_private(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[str, str, int]]:
    """A local registry with htpasswd auth holding a release image: (host:port, manifest digest, blob bytes)."""
    base = tmp_path_factory.mktemp("private")
    (base / "htpasswd").write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    with serve_registry(base, f"auth:\n  htpasswd:\n    realm: test\n    path: {base / 'htpasswd'}\n") as registry:
        layout = base / "layout"
        digest = make_layout(layout, release_layers(uncompressed=False), tag="2.113.0")
        auth = base / "push-auth.json"
        auth.write_text(json.dumps(auth_config([registry], USER, PASSWORD)))
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", f"--dest-authfile={auth}",
                        f"oci:{layout}:2.113.0", f"docker://{registry}/osfleet/test:2.113.0"], check=True, capture_output=True, timeout=60)
        manifest_path = layout / "blobs/sha256" / digest.split(":")[1]
        manifest = json.loads(manifest_path.read_text())
        size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"]) + manifest_path.stat().st_size
        yield registry, digest, size


def run_fetch(tmp_path: Path, registry: str, digest: str, auth: RegistryAuth | None, shell: list[str]) -> subprocess.CompletedProcess[str]:
    plan = FetchPlan(done=False, cache_dir=str(tmp_path / "cache"),
                     attempts=[FetchAttempt("registry", f"{registry}/osfleet/test@{digest}", digest, "2.113.0")])
    return run_call(shell, w.ExportWriter().fetch_script(plan, True, auth), env={"OSFLEET_RUN_DIR": str(tmp_path / "run")})


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_fetch_with_the_credentials_pulls_and_leaves_no_auth_file(tmp_path: Path, private: tuple[str, str, int], shell: list[str]) -> None:
    registry, digest, size = private
    res = run_fetch(tmp_path, registry, digest, RegistryAuth(USER, PASSWORD, (registry,)), shell)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["fetched"] == digest.split(":")[1] and out["bytes"] == size, out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["writer.lock"], "the auth dir is removed"
    assert PASSWORD not in res.stdout + res.stderr


def test_fetch_without_credentials_says_the_registry_wants_them(tmp_path: Path, private: tuple[str, str, int]) -> None:
    registry, digest, _size = private
    res = run_fetch(tmp_path, registry, digest, None, ["busybox", "sh"])
    assert res.returncode == 0, res.stderr
    (attempt,) = json.loads(res.stdout)["attempts"]
    assert not attempt["ok"]
    assert attempt["error"].endswith(f"(the registry {registry} wants credentials: registry_username and registry_password)"), attempt
    assert list((tmp_path / "cache").iterdir()) == [], "a failed fetch leaves nothing, not even the marker"


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_a_wrong_password_fails_before_the_cache_is_touched(tmp_path: Path, private: tuple[str, str, int], shell: list[str]) -> None:
    registry, digest, _size = private
    res = run_fetch(tmp_path, registry, digest, RegistryAuth(USER, "wrong", (registry,)), shell)
    assert res.returncode == 1
    assert res.stderr.strip().startswith(f"login to the registry {registry} as {USER} failed (HTTP 401 from http://{registry}/v2/): "), res.stderr
    assert res.stderr.strip().endswith("; nothing was changed"), res.stderr
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["writer.lock"]


def test_the_login_check_logs_in_and_keeps_nothing(tmp_path: Path, private: tuple[str, str, int]) -> None:
    registry = private[0]
    call = scripts.Call("registry_login", {"tool": "skopeo", "scheme": "http",
                                           "creds": RegistryAuth(USER, PASSWORD, (registry,)).device_input()})
    res = run_call(["busybox", "sh"], call, env={"OSFLEET_RUN_DIR": str(tmp_path / "run")})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"registries": [registry]}
    assert list((tmp_path / "run").iterdir()) == []
    bad = scripts.Call("registry_login", {"tool": "skopeo", "scheme": "http", "creds": RegistryAuth(USER, "nope", (registry,)).device_input()})
    res = run_call(["busybox", "sh"], bad, env={"OSFLEET_RUN_DIR": str(tmp_path / "run")})
    assert res.returncode == 1 and f"login to the registry {registry} as {USER} failed (HTTP 401" in res.stderr, res.stderr
    assert list((tmp_path / "run").iterdir()) == []


def test_the_anonymous_check_names_the_registries_that_want_credentials(tmp_path: Path, private: tuple[str, str, int]) -> None:
    """A Basic challenge means credentials are needed; a registry that answers /v2/ (or none) says nothing."""
    closed = f"127.0.0.1:{free_port()}"
    res = run_call(["busybox", "sh"], w.HostappWriter.anonymous_script(True, [private[0], closed]))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"registries": [private[0], closed], "wants": [private[0]]}


def test_a_failed_login_is_the_reason_as_the_device_words_it() -> None:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import login_refusal  # pylint: disable=import-outside-toplevel
    reason = "login to the registry r:1 as u failed (HTTP 401 from http://r:1/v2/): no; nothing was changed"
    with pytest.raises(DeviceError) as caught:
        with login_refusal():
            raise DeviceError(f"fetch failed on the device (exit 1): {reason}", attempts=[])
    assert str(caught.value) == reason and caught.value.data == {"attempts": []}
    with pytest.raises(DeviceError, match="^fetch failed on the device: other$"):
        with login_refusal():
            raise DeviceError("fetch failed on the device: other")
