# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The base of every osfleet.hup step: a controller-side action plugin that talks to a
Python-less device only through the connection (exec of short POSIX shell scripts).

Each step follows one shape (docs/internals.md, DESIGN §1), and its action plugin
(``plugins/action/<step>.py``) only wires it:

1. probe: one round trip, a shell script prints JSON (built with jq on the device);
2. decide: a pure function from (arguments, probed state) to a plan (``steps/<step>.py``);
3. act: unless check mode, one shell script carries out the plan;
4. verify: probe again; fail with a clear message when the device did not converge.

The scripts are the files ``scripts/<name>.sh`` (:mod:`.shell`), run by name with named
parameters; values never go into the script text.

The base validates the arguments against the module's DOCUMENTATION, turns every
:class:`~.errors.OsfleetError` into a failed result (``msg`` naming the device, ``reason``
without it) and appends the step's outcome to the run log on the device (option ``run_log``,
doc fragment ``osfleet.hup.common``) on every path, failures included.
"""

from __future__ import annotations

import copy
import functools
import importlib
import itertools
import json
import re
import shlex
import time
import typing as t
import uuid
from dataclasses import dataclass, field

import yaml

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import byte_length, script_json
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, OsfleetError, error_text
from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import default_lock_owner

#: the most a device script may print (a probe listing ~10000 boot files prints about 8 MiB); more
#: is refused before it is parsed
SCRIPT_OUTPUT_LIMIT = 32 * 1024 * 1024


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, t.Any]:
        """Parse stdout as one JSON object (probe scripts print exactly one)."""
        return script_json(self.stdout, self.stderr)


#: the exit code of a run's script that refused to run because the run's watchdog gave the run up
#: (scripts/_lib.sh), and what it prints: the watchdog's reason (its ``fired`` file) in brackets
WATCHDOG_GAVE_UP_EXIT = 75
_WATCHDOG_GAVE_UP = re.compile(r"the device's watchdog gave this run up \((?P<fired>.*)\); run again with the same run id")


#: exit codes of a command that ``timeout`` ended (GNU: 124; busybox: killed by TERM or KILL)
TIMEOUT_CODES = (124, 137, 143)


def device_wait_seconds(exec_timeout: int | None, most: int) -> int:
    """How long one call that waits on the device may wait: at most ``most`` seconds, and well
    within the exec_timeout (15 s less) when one is set; at least one second."""
    if exec_timeout:
        most = min(most, int(exec_timeout) - 15)
    return max(1, most)


def clip(text: str, limit: int = 800) -> str:
    """``text`` cut to about ``limit`` characters around its middle: a device script's message puts
    its reason first and its detail (a holder, a file) after, and noise before a final error line
    must not push out either end."""
    if len(text) <= limit:
        return text
    head = limit * 3 // 8
    return f"{text[:head]} ... {text[-(limit - head):]}"


class DeviceSession:
    """Runs scripts on one device through whatever connection the task uses (exec only)."""

    def __init__(self, action: ActionBase, host: str) -> None:
        self._action = action
        self.host = host
        self.round_trips = 0
        #: the update run (option run_id): its scripts tell the run's watchdog the controller is there
        self.run_id: str | None = None
        #: seconds each script may run on the device (option exec_timeout); 0 or None: unbounded
        self.exec_timeout: int | None = None
        #: run log lines of earlier steps that the next command appends first (option
        #: run_log_defer): cleared once a command carried them to the device
        self.carry: list[Carried] = []

    def device_command(self, command: str) -> str:
        """``command`` as the device runs it: with the run id for the watchdog (_lib.sh) and bounded
        by ``timeout`` (exit 124, or 143/137 when killed) when an exec_timeout is set."""
        prefix = []
        if self.run_id:
            prefix.append(f"OSFLEET_RUN_ID={shlex.quote(self.run_id)}")
        if self.exec_timeout:
            seconds = str(int(self.exec_timeout))
            prefix += [f"OSFLEET_EXEC_TIMEOUT={seconds}", "timeout", "-k", "10", seconds]
        return " ".join(prefix + [command])

    def run(self, script: str | shell.Script, *, check: bool = True, what: str | None = None, **params: object) -> CommandResult:
        """Run the device script ``scripts/<script>.sh`` (or a loaded one) with its parameters by name."""
        loaded = shell.load(script) if isinstance(script, str) else script
        command, stdin = loaded.command(**params)
        result = self._exec(command, stdin, check=check, what=what or loaded.name)
        size = byte_length(result.stdout)
        if size > SCRIPT_OUTPUT_LIMIT:
            raise DeviceError(
                f"{what or loaded.name}: the device printed {size // (1024 * 1024)} MiB, more than the "
                f"{SCRIPT_OUTPUT_LIMIT // (1024 * 1024)} MiB a device script may print (a broken or hostile device?); refusing it"
            )
        return result

    def run_json(self, script: str | shell.Script, *, what: str | None = None, **params: object) -> dict[str, t.Any]:
        """Run a script that prints one JSON object, and parse it."""
        return self.run(script, what=what, **params).json()

    def run_with_bytes(self, script: str, data: bytes, *, what: str | None = None, **params: object) -> dict[str, t.Any]:
        """Run a device script that reads ``data`` (raw bytes, sent as they are) on its standard
        input itself (it declares no stdin parameter), and parse the JSON it prints."""
        loaded = shell.load(script)
        command, stdin = loaded.command(**params)
        if stdin is not None:
            raise shell.ScriptError(f"script {loaded.name} declares the stdin parameter {loaded.stdin}; it cannot take raw bytes")
        return self._exec(command, data, check=True, what=what or loaded.name).json()

    def run_command(self, command: str, *, check: bool = True, what: str = "command") -> CommandResult:
        """Run a user's shell command line (``sh -c``), e.g. a health check."""
        return self._exec(shell.user_command(command), None, check=check, what=what)

    def carry_command(self, lines: t.Sequence[Carried]) -> str:
        """The command that appends run log lines of earlier steps before a step's own command
        (``scripts/run_log.sh``, lines as an argument, each once by its id; its standard input, the
        step's, left alone): bounded like every script, without the run id (a line of a step that
        ended is appended also after the watchdog gave the run up), its output dropped (best effort,
        as the run log always was)."""
        script = shell.load("run_log")
        parts = []
        for path, group in itertools.groupby(lines, key=lambda line: line.path):
            command, _stdin = script.command(path=path, lines=carried_text(group), entry="")
            if self.exec_timeout:
                command = f"timeout -k 10 {int(self.exec_timeout)} {command}"
            parts.append(f"{command} </dev/null >/dev/null 2>&1")
        return "; ".join(parts)

    def _exec(self, command: str, stdin: str | bytes | None, *, check: bool, what: str) -> CommandResult:
        self.round_trips += 1
        line = self.device_command(command)
        carry, self.carry = self.carry, []
        if carry:
            # the lines earlier steps left (run_log_defer) ride on this command, appended first
            line = f"{self.carry_command(carry)}; {line}"
        try:
            # sudoable=False: no pty (ssh -tt) and no become. A pty turns "\n" into "\r\n", makes jq
            # colour its output and lets sshd print lastlog noise; the devices are reached as root.
            # pylint: disable-next=protected-access
            res = self._action._low_level_execute_command(line, sudoable=False, in_data=stdin)
        except BaseException:
            # not known to have reached the device: the next command carries them again
            self.carry = carry + self.carry
            raise
        result = CommandResult(
            rc=int(res.get("rc", 1) if res.get("rc") is not None else 1),
            stdout=res.get("stdout", "") or "",
            stderr=res.get("stderr", "") or "",
        )
        gave_up = _WATCHDOG_GAVE_UP.search(result.stderr) if self.run_id and result.rc == WATCHDOG_GAVE_UP_EXIT else None
        if gave_up:
            # whatever the caller checks: the device is the watchdog's now (env put back, supervisor
            # started, lock marked interrupted); the result says so (watchdog_fired)
            raise DeviceError(f"{what} refused to run: {clip(result.stderr.strip())}", watchdog_fired=gave_up.group("fired"))
        if check and result.rc != 0:
            detail = clip(result.stderr.strip() or result.stdout.strip())
            detail = f": {detail}" if detail else ", no output"
            if self.exec_timeout and result.rc in TIMEOUT_CODES:
                raise DeviceError(f"{what} did not finish within {self.exec_timeout} s on the device (exec_timeout; exit {result.rc}){detail}")
            raise DeviceError(f"{what} failed on the device (exit {result.rc}){detail}")
        return result

    def reset_connection(self) -> None:
        """Drop the connection (and a persistent ssh master), so that the next run reconnects.

        Used around reboots: the old connection dies with the device.
        """
        # pylint: disable-next=protected-access
        connection = self._action._connection
        try:
            connection.reset()
        except Exception:  # pylint: disable=broad-exception-caught
            # a dead master or a plugin without reset: closing is enough to reconnect
            connection.close()

    def set_connect_timeout(self, seconds: int) -> None:
        """Bound each connection attempt (ssh ConnectTimeout) when the connection plugin has that option."""
        # pylint: disable-next=protected-access
        connection = self._action._connection
        try:
            connection.set_option("timeout", int(seconds))
        except Exception:  # pylint: disable=broad-exception-caught
            pass  # connection plugins without a timeout option keep their own


@dataclass
class StepResult:
    """What a step returns: ``changed``, the plain ``actions`` list, optional diff and extra keys."""

    changed: bool = False
    actions: list[str] = field(default_factory=list)
    diff: dict[str, t.Any] | None = None
    msg: str = ""
    data: dict[str, t.Any] = field(default_factory=dict)
    failed: bool = False


_TYPE_KEYS = ("type", "required", "default", "choices", "elements", "no_log", "aliases")


_FRAGMENT_PREFIX = "osfleet.hup."


#: options whose values Ansible never logs (``no_log``; DOCUMENTATION cannot say so): the argument
#: spec marks them, and OsfleetAction masks their values in every result and run log line
NO_LOG_OPTIONS = frozenset({"registry_password"})


def _yaml(text: str) -> t.Any:
    """YAML text read with libyaml's safe loader where PyYAML has it (twenty times faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # nosec B506: a safe loader


def argspec_from_doc(documentation: str) -> dict[str, t.Any]:
    """Build an Ansible argument_spec from a module's DOCUMENTATION (the single source of truth).

    Options of this collection's doc fragments named in ``extends_documentation_fragment``
    (``osfleet.hup.<name>`` or ``osfleet.hup.<name>.<variant>``) are included; the module's own
    options win over a fragment's. Read once per process (a step asks for it several times); each
    caller gets a copy of its own.
    """
    return copy.deepcopy(_argspec_from_doc(documentation))


@functools.lru_cache(maxsize=None)
def _argspec_from_doc(documentation: str) -> dict[str, t.Any]:
    doc = _yaml(documentation) or {}
    options: dict[str, t.Any] = {}
    for name in doc.get("extends_documentation_fragment") or []:
        options.update(_fragment_options(str(name)))
    options.update(doc.get("options") or {})
    return _options_to_spec(options)


def _fragment_options(name: str) -> dict[str, t.Any]:
    """The options of one of this collection's doc fragments ({} for other collections' fragments)."""
    if not name.startswith(_FRAGMENT_PREFIX):
        return {}
    module_name, _sep, variant = name[len(_FRAGMENT_PREFIX):].partition(".")
    module = importlib.import_module(f"ansible_collections.osfleet.hup.plugins.doc_fragments.{module_name}")
    text = getattr(module.ModuleDocFragment, variant.upper() if variant else "DOCUMENTATION")
    return (_yaml(text) or {}).get("options") or {}


def _options_to_spec(options: dict[str, t.Any]) -> dict[str, t.Any]:
    spec: dict[str, t.Any] = {}
    for name, opt in options.items():
        entry = {k: opt[k] for k in _TYPE_KEYS if k in opt}
        entry.setdefault("type", "str")
        if name in NO_LOG_OPTIONS:
            entry["no_log"] = True
        if "suboptions" in opt:
            entry["options"] = _options_to_spec(opt["suboptions"])
        spec[name] = entry
    return spec


#: how a step words a device it cannot reach (``reason``; ``msg`` starts with the device's name);
#: the report (plugin_utils/report.py) counts a failure worded so as unreachable
UNREACHABLE = "the device was unreachable: "

#: what a failed result keeps of a ``device`` dict: which device, what runs
FAILED_DEVICE_KEYS = ("version", "device_type", "active_root", "inactive_root", "inactive_version", "boot_id")
#: ... and, when not empty, what a refusal may be about (the lock's holder, releases rolled back)
FAILED_DEVICE_REASONS = ("lock", "rolled_back", "rollback_markers")


def short_failure(result: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A failed result as short as the operator's screen needs it (Ansible prints a failed result
    whole: ``fatal: [host]: FAILED! => {...}``).

    Every key stays (a step's RETURN promises them), but the device's whole state becomes a summary
    (:data:`FAILED_DEVICE_KEYS`, and :data:`FAILED_DEVICE_REASONS` when not empty), a release its
    version and device type, and a list of registries those that did not answer. ``msg``,
    ``reason`` and the keys the standard role's rescue reads (``rolled_back``, ``rollback_reason``,
    ``watchdog_fired``, ...) are left as they are.
    """
    out = dict(result)
    device = out.get("device")
    if isinstance(device, t.Mapping):
        summary = {k: device[k] for k in FAILED_DEVICE_KEYS if k in device}
        summary.update({k: device[k] for k in FAILED_DEVICE_REASONS if device.get(k)})
        out["device"] = summary
    release = out.get("release")
    if isinstance(release, t.Mapping):
        out["release"] = {k: release[k] for k in ("version", "device_type") if k in release}
    registries = out.get("registries")
    if isinstance(registries, list):
        out["registries"] = [r for r in registries if not (isinstance(r, t.Mapping) and r.get("ok"))]
    return out


#: the host fact that hands the next step the run log lines a step left to it (option
#: run_log_defer): ``[{"path": <run log>, "line": <JSON line>, "id": <its id>}, ...]``, oldest first
RUN_LOG_DEFERRED_FACT = "osfleet_hup_run_log_deferred"
#: the most characters of run log lines (with their paths) a step leaves to the next one: they ride
#: on that step's command line (the device's shell takes an argument of at most 128 KiB, the
#: script's text included); a step whose line would pass it writes the lines at once
RUN_LOG_CARRY_LIMIT = 16 * 1024


_CARRY_ID = re.compile(r"[0-9a-f]{8,64}")


class Carried(t.NamedTuple):
    """A run log line handed on to the next step: the log, the JSON line, and its id (the device
    appends a line once by its id: ``scripts/run_log.sh``)."""

    path: str
    line: str
    id: str

    @classmethod
    def new(cls, path: str, line: str) -> Carried:
        return cls(path, line, uuid.uuid4().hex)


def carried_text(lines: t.Iterable[Carried]) -> str:
    """The ``lines`` argument of ``scripts/run_log.sh``: ``<id><TAB><JSON line>`` a line (a JSON
    line holds no TAB and no line break)."""
    return "\n".join(f"{line.id}\t{line.line}" for line in lines)


def carried_size(lines: t.Iterable[Carried]) -> int:
    return sum(len(line.path) + len(line.line) + len(line.id) + 2 for line in lines)


def deferred_lines(task_vars: t.Mapping[str, t.Any]) -> list[Carried]:
    """The run log lines earlier steps of the host left to this one (:data:`RUN_LOG_DEFERRED_FACT`);
    what is not a path, one line without a TAB and an id is dropped."""
    facts = task_vars.get("ansible_facts")
    raw = facts.get(RUN_LOG_DEFERRED_FACT) if isinstance(facts, t.Mapping) else None
    lines = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, t.Mapping):
            path, line, ident = item.get("path"), item.get("line"), item.get("id")
            if (isinstance(path, str) and path and isinstance(line, str) and line and not set(line) & {"\n", "\t"}
                    and isinstance(ident, str) and _CARRY_ID.fullmatch(ident)):
                lines.append(Carried(path, line, ident))
    return lines


def with_deferred_lines(result: dict[str, t.Any], lines: t.Sequence[Carried], carried: bool) -> dict[str, t.Any]:
    """``result`` with the run log lines left to the next step as a host fact: set when there are
    any, emptied when the step was handed some (it wrote them). (Ansible keeps the facts of a
    result that did not fail only: the next step of a failed one is handed what it was handed,
    which the device appends once.)"""
    if lines or carried:
        result["ansible_facts"] = {RUN_LOG_DEFERRED_FACT: [line._asdict() for line in lines]}
    return result


def now_iso() -> str:
    """The controller's time, UTC, ISO 8601 (run log entries, rollback markers)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class OsfleetAction(ActionBase):
    """Base class of the step action plugins. Subclasses set DOCUMENTATION and implement step()."""

    TRANSFERS_FILES = False
    _requires_connection = True

    DOCUMENTATION: str = ""
    MUTUALLY_EXCLUSIVE: list[list[str]] = []
    REQUIRED_IF: list[t.Any] = []
    REQUIRED_TOGETHER: list[list[str]] = []
    #: read-only steps (device_info) never report changed
    READ_ONLY = False
    #: whether the step's scripts send the run id to the run's watchdog (the lock step starts and
    #: resumes the watchdog itself, so it must run also after the watchdog gave the run up)
    HEARTBEAT = True
    #: steps that write their own run log line (run_log) instead of the base's
    LOGS_ITSELF = False
    #: the step that first contacts the device (preflight): a connection failure makes its result
    #: unreachable (Ansible counts the device unreachable and runs no rescue for it); in the other
    #: steps it is a failure, so that the role's rescue runs (it cleans up once the link is back)
    FIRST_CONTACT = False

    @property
    def argument_spec(self) -> dict[str, t.Any]:
        """The argument spec, from DOCUMENTATION and the collection's doc fragments it extends."""
        return argspec_from_doc(self.DOCUMENTATION)

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        self._supports_check_mode = True
        self._supports_async = False
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        host = str(task_vars.get("inventory_hostname", "device"))
        session = DeviceSession(self, host)
        session.carry = deferred_lines(task_vars)
        try:
            _validation, args = self.validate_argument_spec(
                argument_spec=self.argument_spec,
                mutually_exclusive=self.MUTUALLY_EXCLUSIVE or None,
                required_if=self.REQUIRED_IF or None,
                required_together=self.REQUIRED_TOGETHER or None,
            )
        except AnsibleActionFail as exc:
            self._append_run_log(session, self._task.args.get("run_log"), {"failed": True, "changed": False, "reason": exc.message})
            raise
        session.run_id = args.get("run_id") if self.HEARTBEAT else None
        session.exec_timeout = args.get("exec_timeout")
        #: what a failed result says about how far the step got (set by the step, e.g. ``acted``)
        self.failure_data: dict[str, t.Any] = {}
        carried = bool(session.carry)
        try:
            result.update(self._result(self.step(args, session), host))
        except OsfleetError as exc:
            result.update(self.failure_data)
            result.update(exc.data)
            result.update(failed=True, changed=False, msg=f"{host}: {exc}", reason=str(exc))
        except AnsibleConnectionFailure as exc:
            reason = UNREACHABLE + error_text(exc)
            if self.FIRST_CONTACT:
                # no run log either: the device cannot be reached to write it
                result.pop("failed", None)
                result.update(unreachable=True, changed=False, msg=f"{host}: {reason}", reason=reason)
                return with_deferred_lines(result, session.carry, carried)
            result.update(self.failure_data)
            result.update(failed=True, changed=False, unreachable=False, msg=f"{host}: {reason}", reason=reason)
        result.setdefault("actions", [])
        secrets = self.secret_values(args)
        if secrets:
            # belt and braces: no step puts a no_log option's value into its result, but a device's or
            # a tool's message could echo it; it never reaches the result or the run log
            result = remove_values(result, secrets)
        self._append_run_log(session, args.get("run_log"), result, args)
        result = with_deferred_lines(result, session.carry, carried)
        return short_failure(result) if result.get("failed") else result

    def note_failure(self, **data: t.Any) -> None:
        """What a failed result of this step says about how far it got (e.g. ``acted=True`` once
        its act went to the device), whatever ends the step after that."""
        vars(self).setdefault("failure_data", {}).update(data)

    def secret_values(self, args: t.Mapping[str, t.Any]) -> set[str]:
        """The values of the options documented with ``no_log: true`` (registry_password)."""
        return {str(args[name]) for name, spec in self.argument_spec.items() if spec.get("no_log") and args.get(name)}

    def _result(self, step: StepResult, host: str) -> dict[str, t.Any]:
        result: dict[str, t.Any] = {"changed": bool(step.changed) and not self.READ_ONLY, "actions": list(step.actions)}
        if step.diff is not None and self._task.diff:
            result["diff"] = step.diff
        result.update(step.data)
        if step.failed:
            reason = step.msg or "failed"
            result.update(failed=True, msg=f"{host}: {reason}", reason=reason)
        elif step.msg:
            result["msg"] = step.msg
        return result

    def run_log_fields(self, args: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        """What every line of the run log carries besides the step's outcome: the run (option
        run_info: run_id, target) and the controller that ran it."""
        fields: dict[str, t.Any] = {"controller": default_lock_owner()}
        info = args.get("run_info") or {}
        for key in ("run_id", "target"):
            if info.get(key):
                fields[key] = str(info[key])
        if "run_id" not in fields and args.get("run_id"):
            fields["run_id"] = str(args["run_id"])
        return fields

    def logs_result(self, result: t.Mapping[str, t.Any]) -> bool:
        """Whether this result goes into the run log (a step may keep a no-op run from making a log)."""
        return not self.LOGS_ITSELF

    def _append_run_log(self, session: DeviceSession, path: t.Any, result: t.Mapping[str, t.Any], args: t.Mapping[str, t.Any] | None = None) -> None:
        """Append one JSON line for this step to the run log on the device (best effort; not in check mode),
        after the lines of earlier steps no command carried yet (``session.carry``).

        With ``run_log_defer`` a step that did not fail leaves its line (and those) in
        ``session.carry`` instead, for the next step's first command (:func:`deferred_lines`); a
        failure is written at once. Lines whose write did not reach the device stay in
        ``session.carry`` when they were carried or deferred, so that the next step tries again."""
        args = args or {}
        carried = session.carry
        session.carry = []
        lines = list(carried)
        own = None
        if path and not self.check_mode and self.logs_result(result):
            entry = {
                "time": now_iso(),
                **self.run_log_fields(args),
                "step": self._task.action.rsplit(".", 1)[-1],
                "changed": bool(result.get("changed")),
                "failed": bool(result.get("failed")),
                "actions": list(result.get("actions") or []),
                "msg": str(result.get("reason") or result.get("msg") or ""),
            }
            own = Carried.new(str(path), json.dumps(entry, sort_keys=True))
        defer = bool(args.get("run_log_defer"))
        if own and defer and not result.get("failed") and carried_size([*lines, own]) <= RUN_LOG_CARRY_LIMIT:
            session.carry = [*lines, own]
            return
        # at once: the lines handed to this step (each once, by its id), then its own
        logs = list(dict.fromkeys([line.path for line in lines] + ([own.path] if own else [])))
        for log in logs:
            handed = [line for line in lines if line.path == log]
            mine = own if own and own.path == log else None
            try:
                session.run("run_log", path=log, lines=carried_text(handed), entry=mine.line if mine else "", check=False, what="run log")
            except (AnsibleError, OsfleetError):
                if defer or carried:
                    # the next step tries again; its own line too, when small enough to be handed on
                    session.carry += handed + ([mine] if mine and carried_size([mine]) <= RUN_LOG_CARRY_LIMIT else [])

    @property
    def check_mode(self) -> bool:
        return bool(self._task.check_mode)

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        raise NotImplementedError
