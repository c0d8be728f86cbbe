# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as an operator gets it: built, installed into an empty path, run from there.

``docs/install.md`` names three ways; each is exercised here with the controller's own
``ansible-galaxy``: the built tarball (``ansible-galaxy collection build`` then ``install``), a
``requirements.yml`` naming that tarball, and a git URL of this repository's commit. The tarball's
install then updates a lab device with ``ansible-playbook osfleet.hup.update`` while the checkout
is out of reach (``ANSIBLE_COLLECTIONS_PATH`` is the install path only, no ``sys.path`` scan, no
``PYTHONPATH``), so a file the tarball lacks fails the update here.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from osfleet_harness import REPO_ROOT, VENV_BIN, Lab, ansible_playbook

LAB_PREFIX = "itinstall"
LAB_DEVICES = 1
SOURCE, TARGET = "2.88.4", "2.113.0"
VERSION = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text(encoding="utf-8"))["version"]


def isolated_env(collections: Path) -> dict[str, str]:
    """Ansible sees the collections under ``collections`` and nothing of the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATHS")}
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
    })
    return env


def galaxy(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """ansible-galaxy; an install gets :func:`isolated_env` (else it finds the checkout and installs nothing)."""
    proc = subprocess.run([str(VENV_BIN / "ansible-galaxy"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"ansible-galaxy {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def installed_manifest(collections: Path) -> dict:
    path = collections / "ansible_collections" / "osfleet" / "hup" / "MANIFEST.json"
    assert path.is_file(), f"nothing installed at {path.parent}"
    return json.loads(path.read_text(encoding="utf-8"))["collection_info"]


def doc_path(collections: Path, cwd: Path) -> str:
    """The file ``ansible-doc`` reads for osfleet.hup.preflight with only ``collections`` on the path."""
    proc = subprocess.run([str(VENV_BIN / "ansible-doc"), "--json", "-t", "module", "osfleet.hup.preflight"], cwd=cwd, env=isolated_env(collections),
                          capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["osfleet.hup.preflight"]["doc"]["filename"]


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    galaxy("collection", "build", "--output-path", str(out), str(REPO_ROOT), cwd=out)
    built = out / f"osfleet-hup-{VERSION}.tar.gz"
    assert built.is_file(), f"ansible-galaxy collection build made {sorted(p.name for p in out.iterdir())}"
    return built


def test_tarball_holds_the_collection_and_not_the_lab(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for needed in ("MANIFEST.json", "FILES.json", "playbooks/update.yml", "roles/standard/tasks/main.yml", "meta/runtime.yml",
                   "plugins/action/preflight.py", "plugins/plugin_utils/scripts/write_root.sh", "docs/install.md"):
        assert needed in names, f"the tarball lacks {needed}"
    leaked = sorted(n for n in names if n.startswith(("tests/lab", "tests/tools", ".venv", "build/", ".git")))
    assert not leaked, f"the tarball carries development files: {leaked[:10]}"


def test_tarball_install_updates_a_device(lab: Lab, tarball: Path, tmp_path: Path) -> None:
    collections = tmp_path / "collections"
    galaxy("collection", "install", str(tarball), "-p", str(collections), cwd=tmp_path, env=isolated_env(collections))
    assert installed_manifest(collections)["version"] == VERSION
    assert doc_path(collections, tmp_path).startswith(str(collections)), "ansible-doc read the checkout, not the install"

    host = lab.hosts[0]
    assert lab.state(host).version == SOURCE
    run = ansible_playbook(lab, workdir=tmp_path / "ansible", extra_vars={"hup_target_version": TARGET}, env=isolated_env(collections))
    assert run.rc == 0, run.summary()
    state = lab.state(host)
    assert (state.version, state.active_root) == (TARGET, "resin-rootB"), f"{host} runs {state.version} on {state.active_root}"
    again = ansible_playbook(lab, workdir=tmp_path / "ansible", extra_vars={"hup_target_version": TARGET}, env=isolated_env(collections))
    assert again.rc == 0 and again.stats[host]["changed"] == 0, again.summary()


def test_requirements_file_install(tarball: Path, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.yml"
    requirements.write_text(yaml.safe_dump({"collections": [{"name": str(tarball), "type": "file"}]}), encoding="utf-8")
    collections = tmp_path / "collections"
    galaxy("collection", "install", "-r", str(requirements), "-p", str(collections), cwd=tmp_path, env=isolated_env(collections))
    assert installed_manifest(collections)["version"] == VERSION
    assert doc_path(collections, tmp_path).startswith(str(collections))


def test_git_url_install(tmp_path: Path) -> None:
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    collections = tmp_path / "collections"
    galaxy("collection", "install", f"git+file://{REPO_ROOT},{commit}", "-p", str(collections), cwd=tmp_path, env=isolated_env(collections))
    assert installed_manifest(collections)["version"] == VERSION
    committed = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{commit}:roles/standard/tasks/main.yml"], capture_output=True, text=True, check=True).stdout
    installed = collections / "ansible_collections" / "osfleet" / "hup" / "roles" / "standard" / "tasks" / "main.yml"
    assert installed.read_text(encoding="utf-8") == committed, "the git install is not the commit it names"
    assert doc_path(collections, tmp_path).startswith(str(collections))
