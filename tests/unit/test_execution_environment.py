# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml: `make ee-context` (collection tarball + ansible-builder create) and
what the build would install (ansible-builder introspect on the collection the tarball installs).

Building the image needs a container engine, which this machine lacks: the test stops at the
context, and checks it as the engine would read it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import typing as t
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CONTEXT = REPO / "build" / "ee" / "context"


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)  # the checkout's link would count as installed already
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def test_ee_context_and_introspection(tmp_path: Path) -> None:
    proc = run(str(REPO / "tests" / "tools" / "ee-context"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    containerfile = (CONTEXT / "Containerfile").read_text()
    assert f'ARG EE_BASE_IMAGE="{definition["images"]["base_image"]["name"]}"' in containerfile
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==2.21.5 ansible-runner==' in containerfile
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" in containerfile
    assert "introspect.py introspect" in containerfile and "FROM base AS final" in containerfile
    requirements = yaml.safe_load((CONTEXT / "_build" / "requirements.yml").read_text())
    assert requirements["collections"] == [{"name": "collections/osfleet-hup.tar.gz", "type": "file"}]

    tarball = CONTEXT / "_build" / "collections" / "osfleet-hup.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    for name in ("MANIFEST.json", "plugins/callback/report.py", "plugins/inventory/fleet.py", "roles/standard/tasks/main.yml",
                 "playbooks/update.yml", "meta/execution-environment.yml", "meta/ee-bindep.txt"):
        assert name in names, name
    assert not [n for n in names if n.startswith(("tests/lab", ".venv", "build/"))]

    # what the image's builder stage would install: the collection's own meta/execution-environment.yml
    installed = run("ansible-galaxy", "collection", "install", "--force", str(tarball), "-p", str(tmp_path / "collections"))
    assert installed.returncode == 0 and f"osfleet.hup:{version} was installed successfully" in installed.stdout, installed.stdout + installed.stderr
    introspect = run("ansible-builder", "introspect", "--sanitize", str(tmp_path / "collections"))
    assert introspect.returncode == 0, introspect.stderr
    deps: dict[str, t.Any] = yaml.safe_load(introspect.stdout.split("\n", 1)[1])
    # the controller-side code needs nothing beyond ansible-core (and its PyYAML)
    assert not deps.get("python"), deps
    assert {line.split("  #")[0] for line in deps["system"]} >= {"skopeo [platform:rpm]", "skopeo [platform:dpkg]",
                                                                 "openssh-clients [platform:rpm]", "openssh-client [platform:dpkg]"}, deps
