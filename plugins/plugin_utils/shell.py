# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The device scripts: ``scripts/<name>.sh``, loaded by name and called with named parameters.

Each script declares its parameters in one place, its first line of code, which assigns them::

    label=$1 dev=$2 mode=$3 attempts=$(cat)

``NAME=$N`` (or ``NAME=${N}``) is the N-th positional parameter, in order from 1; ``NAME=$(cat)``
(at most one, last) is the script's standard input, for lists and large values. A script whose
first code line is anything else takes no parameters. :meth:`Script.command` takes the values by
name, in the spirit of community.general's CmdRunner, refuses a missing or an unknown name, and
returns one ``sh -c <script> osfleet <values...>`` command line (every part quoted with
shlex.quote) and the standard input: the script text is a constant, values never enter it.

``scripts/_lib.sh`` holds the functions the scripts share. The loader puts its preamble (the code
above its first function: ``set -u``, ``PATH``) in front of every script, then the functions the
script names (and those they name).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import typing as t
from dataclasses import dataclass

SCRIPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
LIBRARY = "_lib"
#: ``$0`` of every script
ARGV0 = "osfleet"

_PARAM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(?:\$([1-9])|\$\{([1-9][0-9]*)\}|(\$\(cat\)))$")
_USES_ARGS = re.compile(r"\$[1-9]|\$\{[1-9]|\$\(cat\b")
#: keyword arguments of DeviceSession.run, so no script parameter may have these names
RESERVED = ("check", "what")
_FUNCTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\(\) \{$")
#: a whole word of a script, as a function name must stand in it to count (Library.needed_by)
_WORD = re.compile(r"[\w-]+")


class ScriptError(TypeError):
    """A script is malformed, or called with a missing or an unknown parameter (a programming error)."""


def _code_lines(text: str) -> list[str]:
    """The script without its header: from the first line of code on."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            return lines[index:]
    return []


def parse_params(name: str, first_line: str) -> tuple[tuple[str, ...], str | None]:
    """The positional parameters and the stdin parameter declared by a script's first code line."""
    tokens = first_line.split()
    matches = [_PARAM.match(token) for token in tokens]
    if not tokens or not all(matches):
        if _USES_ARGS.search(first_line):
            raise ScriptError(f"script {name}: its first code line must only assign its parameters (NAME=$N ... NAME=$(cat)): {first_line!r}")
        return (), None
    params: list[str] = []
    stdin: str | None = None
    for match in t.cast(list[re.Match[str]], matches):
        if stdin is not None:
            raise ScriptError(f"script {name}: the stdin parameter {stdin} must come last")
        if match.group(4):
            stdin = match.group(1)
            continue
        position = int(match.group(2) or match.group(3))
        if position != len(params) + 1:
            raise ScriptError(f"script {name}: parameter {match.group(1)} is ${position}, expected ${len(params) + 1}")
        params.append(match.group(1))
    names = params + ([stdin] if stdin else [])
    if len(set(names)) != len(names):
        raise ScriptError(f"script {name}: a parameter is declared twice: {first_line!r}")
    if set(names) & set(RESERVED):
        raise ScriptError(f"script {name}: {', '.join(RESERVED)} cannot be parameter names")
    return tuple(params), stdin


@dataclass(frozen=True)
class Library:
    """``scripts/_lib.sh``: the preamble and the functions by name (in file order)."""

    preamble: str
    functions: dict[str, str]

    def needed_by(self, *texts: str) -> list[str]:
        """The functions that ``texts`` name, and those these name in turn, in library order.

        A name counts where it is a whole word (no letter, digit, ``_`` or ``-`` next to it): each
        text is split into such words once (every step builds its scripts in a process of its own,
        and a search per function and text cost the preflight a tenth of a second).
        """
        wanted: set[str] = set()
        todo = list(texts)
        while todo:
            for fname in sorted(set(_WORD.findall(todo.pop())) & self.functions.keys() - wanted):
                wanted.add(fname)
                todo.append(self.functions[fname])
        return [fname for fname in self.functions if fname in wanted]

    def text_for(self, *texts: str) -> str:
        """The preamble and the functions ``texts`` need."""
        return self.preamble + "".join(self.functions[fname] for fname in self.needed_by(*texts))


def _parse_library(text: str) -> Library:
    preamble: list[str] = []
    functions: dict[str, str] = {}
    current: list[str] | None = None
    fname = ""
    for line in _code_lines(text):
        match = _FUNCTION.match(line)
        if current is None and match:
            fname, current = match.group(1), [line]
            continue
        if current is not None:
            current.append(line)
            if line == "}":
                functions[fname] = "\n".join(current) + "\n"
                current = None
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            if functions:
                raise ScriptError(f"scripts/{LIBRARY}.sh: code outside a function after the first one: {line!r}")
            preamble.append(line)
    if current is not None:
        raise ScriptError(f"scripts/{LIBRARY}.sh: function {fname} has no closing '}}' line")
    return Library("\n".join(preamble) + "\n", functions)


@functools.lru_cache(maxsize=None)
def library() -> Library:
    """The shared functions (``scripts/_lib.sh``)."""
    return _parse_library(_read(LIBRARY))


def _read(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ScriptError(f"invalid script name {name!r}")
    path = os.path.join(SCRIPT_DIR, f"{name}.sh")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ScriptError(f"no device script {name} ({path}: {exc.strerror or exc})") from None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True)
class Script:
    """One device script: its name, body (without the library), parameters and full text."""

    name: str
    body: str
    params: tuple[str, ...]
    stdin: str | None
    text: str
    #: a script made by :func:`then_probe`: its act and its probe, each with its own parameters
    parts: tuple[Script, Script] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.params + ((self.stdin,) if self.stdin else ())

    def command(self, **values: object) -> tuple[str, str | None]:
        """``(command line, standard input)`` for the parameters given by name.

        Values become text: None is "", a bool "1" or "0". The stdin parameter is sent as is when
        it is a str, as JSON otherwise, always with a final newline (``$(cat)`` strips it).
        """
        argv, stdin = self.argv(**values)
        return " ".join(shlex.quote(part) for part in argv), stdin

    def argv(self, **values: object) -> tuple[list[str], str | None]:
        """:meth:`command` as an argument vector (``["sh", "-c", text, "osfleet", ...]``)."""
        missing = [p for p in self.names if p not in values]
        unknown = sorted(set(values) - set(self.names))
        if missing or unknown:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            raise ScriptError(f"script {self.name}: {'; '.join(parts)} (its parameters: {', '.join(self.names) or 'none'})")
        stdin = None
        if self.stdin:
            data = values[self.stdin]
            stdin = (data if isinstance(data, str) else json.dumps(data, sort_keys=True)) + "\n"
        return ["sh", "-c", self.text, ARGV0] + [_text(values[p]) for p in self.params], stdin


@functools.lru_cache(maxsize=None)
def load(name: str) -> Script:
    """``scripts/<name>.sh`` with the library functions it needs."""
    lines = _code_lines(_read(name))
    params, stdin = parse_params(name, lines[0] if lines else "")
    body = "\n".join(lines) + "\n"
    return Script(name, body, params, stdin, library().text_for(body) + body)


@functools.lru_cache(maxsize=None)
def probe(extra: str | None = None) -> Script:
    """The device probe (``scripts/probe.sh``), extended by a step's own probe in the same round trip.

    ``extra`` names a script (``probe_<name>``) that becomes the body of the shell function
    ``osfleet_probe_extra``; its parameters are the probe's, and it prints one JSON object.
    """
    main = load("probe")
    part = load(extra) if extra else None
    body = part.body if part else ":\n"
    function = "osfleet_probe_extra() {\n" + body + "}\n"
    text = library().text_for(main.body, body) + function + main.body
    name = f"probe+{extra}" if extra else "probe"
    return Script(name, main.body, part.params if part else (), part.stdin if part else None, text)


#: what a script made by :func:`then_probe` prints first: the act's output as one JSON string on one
#: line; the probe's JSON object follows
THEN_PROBE_SEPARATOR = "\n"


@functools.lru_cache(maxsize=None)
def then_probe(act: str, extra: str | None = None) -> Script:
    """The act script ``scripts/<act>.sh`` and then the device probe (:func:`probe` with ``extra``)
    in one round trip: the probe reads the device after the act has ended, so a step verifies what
    the act did on the device's own state, not on the act's word.

    The act runs as the shell function ``osfleet_act`` in a command substitution (a subshell: its
    ``exit`` and its variables stay its own) with its parameters; when it fails, the script exits
    with its status at once (the probe does not run) and its standard error is the script's. Else
    its output is printed as one JSON string on the first line (:func:`split_then_probe`) and the
    probe runs with its parameters: the probe's own jq prints it (``osfleet_act_out``, set: no jq
    start of its own, ~25 ms of a device's CPU). The parameters of both are named together (no name twice; at
    most one of them takes the standard input).

    Only for an act that sets no trap: a signal (``timeout`` of exec_timeout) ends the script, not
    the act's subshell, which would run on without its handler (a long writer with traps, like
    write_root.sh, runs as a script of its own).
    """
    first = load(act)
    if re.search(r"(^|[;&|]\s*|\s)trap\s", first.body):
        raise ScriptError(f"script {first.name} sets a trap: it runs alone, not within then_probe")
    second = probe(extra)
    names = first.names + second.names
    if len(set(names)) != len(names):
        raise ScriptError(f"scripts {first.name} and {second.name} share a parameter name: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
    if first.stdin and second.stdin:
        raise ScriptError(f"scripts {first.name} and {second.name} both read the standard input")
    extra_body = load(extra).body if extra else ":\n"
    main = load("probe").body
    args = " ".join(f'"${{{n}}}"' for n in range(1, len(first.params) + 1))
    run = (
        "osfleet_act() {\n" + first.body + "}\n"
        + "osfleet_probe_extra() {\n" + extra_body + "}\n"
        + f"osfleet_act_out=$(osfleet_act{' ' + args if args else ''}) || exit\n"
        + (f"shift {len(first.params)}\n" if first.params else "")
    )
    text = library().text_for(first.body, extra_body, main) + run + main
    return Script(f"{first.name}+{second.name}", run + main, first.params + second.params, first.stdin or second.stdin, text,
                  parts=(first, second))


def split_then_probe(stdout: str) -> tuple[str, str]:
    """What a script made by :func:`then_probe` printed: (the act's output, the probe's JSON text)."""
    line, sep, rest = stdout.lstrip("\n").partition(THEN_PROBE_SEPARATOR)
    try:
        act = json.loads(line) if sep else None
    except ValueError:
        act = None
    if not isinstance(act, str):
        raise ValueError(f"the act's output is not a JSON string on the first line: {stdout[:200]!r}")
    return act, rest


def join_then_probe(act_stdout: str, probe_stdout: str) -> str:
    """:func:`split_then_probe`'s inverse (what the device prints; the unit tests' devices use it)."""
    return json.dumps(act_stdout.rstrip("\n")) + THEN_PROBE_SEPARATOR + probe_stdout


@dataclass(frozen=True)
class Call:
    """A script to run and its parameters by name (what a writer hands to its step)."""

    script: str
    params: t.Mapping[str, object]


def user_command(command: str) -> str:
    """A user's shell command line (health checks) as ``sh -c <command> osfleet``."""
    return " ".join(shlex.quote(part) for part in ("sh", "-c", command, ARGV0))


def script_names() -> list[str]:
    """Every device script (the library excluded)."""
    return sorted(f[:-3] for f in os.listdir(SCRIPT_DIR) if f.endswith(".sh") and f[:-3] != LIBRARY)
