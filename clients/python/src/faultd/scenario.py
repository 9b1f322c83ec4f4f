"""Timed scenarios: the TOML files ``faultctl run`` plays, read and played from Python.

    from faultd import Client, Scenario

    scenario = Scenario.from_path("examples/scenarios/flapping-link.toml")
    with Client() as client:
        scenario.run(client, report=print)

The format is docs/scenarios.md's; the rules are the Rust library's (faultd-api's
``scenario`` module), which faultctl uses: steps at offsets (``at``), faults added for a
while (``for``) or removed (``remove``), rounds (``repeat``, ``every``), a final ``heal``.
A step's fault is the API's ``FaultSpec`` written flat and read against the generated
messages' descriptors, so a field the protos gain is a scenario key with no code here:
``action`` names a field of ``Action``'s oneof; other keys are fields of ``Target``, of the
action's message or of ``FaultSpec``; enums by their short names (``to-port``); integer
fields in ``_ms``/``_us`` also take durations (``"200ms"``) and may be named without the
suffix; ``*bits_per_second`` takes rates (``"1mbit"``). Value ranges are faultd's to judge.

Errors name ``origin:line:column``; TOML syntax errors carry the parser's position, the
others the position of the key or value found in the text (Python's TOML parser keeps no
positions, so this one looks the key up in the step it belongs to).
"""

import re
import threading
import time

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - older Pythons with tomli installed
    try:
        import tomli as _toml
    except ModuleNotFoundError:
        _toml = None

from google.protobuf.descriptor import FieldDescriptor as _FD

from faultd.errors import FaultdError, InvalidArgument
from faultd.v1 import faultd_pb2 as pb

__all__ = ["Scenario", "ScenarioError", "ScenarioFailed"]


class ScenarioError(InvalidArgument):
    """A scenario file that is wrong: ``origin``, ``line``, ``column`` and ``message``."""

    def __init__(self, origin, line, column, message):
        super().__init__(f"{origin}:{line}:{column}: {message}")
        self.origin, self.line, self.column, self.detail = origin, line, column, message


class ScenarioFailed(FaultdError):
    """faultd refused a step (or a removal failed); the run healed first. ``cause`` is the
    client's error, ``rows`` what the run reported."""

    def __init__(self, context, cause, rows):
        super().__init__(f"{context}: {cause.message}", getattr(cause, "code", None))
        self.cause = cause
        self.rows = rows


class _Located(Exception):
    def __init__(self, where, message, at_key=False):
        super().__init__(message)
        self.where = where  # a path of keys, for _locate
        self.message = message
        self.at_key = at_key  # the key itself is wrong, not its value


# --- durations and rates, as faultctl reads them ---------------------------------------

_UNITS = {
    "ns": 1e-9, "nsec": 1e-9, "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}
_PART = re.compile(r"\s*(\d+)\s*([a-z]+)")


def parse_offset(text):
    """``"1m 30s"`` → 90.0 seconds; 0 allowed."""
    if not isinstance(text, str):
        raise ValueError(f'"{text}" is not a duration like 500ms, 30s or 2m')
    rest, total, parts = text.strip(), 0.0, 0
    while rest:
        m = _PART.match(rest)
        if not m or m.group(2) not in _UNITS:
            raise ValueError(f'"{text}" is not a duration like 500ms, 30s or 2m')
        total += int(m.group(1)) * _UNITS[m.group(2)]
        rest, parts = rest[m.end():].lstrip(), parts + 1
    if not parts:
        raise ValueError(f'"{text}" is not a duration like 500ms, 30s or 2m')
    return total


def _fmt(seconds):
    """As Rust prints a Duration: 200ms, 1.5s."""
    ms = seconds * 1000
    if 0 < seconds < 1 and abs(ms - round(ms)) < 1e-6:
        return f"{round(ms)}ms"
    return f"{seconds:g}s"


def parse_duration(text):
    seconds = parse_offset(text)
    if seconds <= 0:
        raise ValueError("a duration must be longer than 0")
    return seconds


_RATE_UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
               "bps": 8, "kbps": 8e3, "mbps": 8e6}


def parse_rate(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m:
        raise ValueError(f'"{text}" is not a rate like 1mbit, 500kbit or 2mbps')
    unit = m.group(2).lower()
    if unit not in _RATE_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r}: use bit, kbit, mbit, gbit, bps, kbps or mbps")
    return round(float(m.group(1)) * _RATE_UNITS[unit])


def parse_ports(text):
    """``"2379"`` or ``"2379-2381"`` → (first, last or None), as faultctl's ``--port`` reads it
    (ports 1-65535, the range not ending before it starts)."""
    def port(t):
        stripped = t.strip()
        if stripped.isdigit() and 0 < int(stripped) <= 65535:
            return int(stripped)
        raise ValueError(f'"{t}" is not a port (1-65535)')
    if "-" not in text:
        return port(text), None
    a, b = text.split("-", 1)
    first, last = port(a), port(b)
    if last < first:
        raise ValueError(f"the range {first}-{last} ends before it starts")
    return first, last


# --- a step's fault → FaultSpec, through the descriptors -------------------------------

def _dashed(name):
    return name.replace("_", "-")


def action_names():
    """The actions the API knows, as scenario files name them (``limit-bytes``)."""
    return [_dashed(f.name) for f in pb.Action.DESCRIPTOR.fields]


def _upper_snake(name):
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).upper()


def _enum_names(enum):
    prefix = _upper_snake(enum.name) + "_"
    return {
        v.name[len(prefix):].lower().replace("_", "-") if v.name.startswith(prefix) else v.name.lower(): v.number
        for v in enum.values if v.number != 0
    }


def _resolve(descriptor, name):
    field = descriptor.fields_by_name.get(name)
    for suffix in ("_ms", "_us"):
        field = field or descriptor.fields_by_name.get(name + suffix)
    if field is None:
        return None
    if descriptor is pb.FaultSpec.DESCRIPTOR and field.type == _FD.TYPE_MESSAGE:
        return None  # target and action are the table itself
    return field


def _short(name):
    for suffix in ("_ms", "_us"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _shown(value, nested=False):
    """A value as the file wrote it (as TOML prints it), strings unquoted at the top."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if nested else value
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v, nested=True) for v in value) + "]"
    return str(value)


def _integer(field, value):
    """An integer field's value; the error is the message after the field's name."""
    name = field.name
    timed = name.endswith("_ms") or name.endswith("_us")
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and timed:
        seconds = parse_duration(value)
        number = round(seconds * (1000 if name.endswith("_ms") else 1_000_000))
    elif isinstance(value, str) and name.endswith("bits_per_second"):
        number = parse_rate(value)
    else:
        expected = 'a duration like "500ms" or an integer' if timed else "an integer"
        raise ValueError(f"expected {expected}, found {_shown(value)}")
    type_name, bits, signed = {
        _FD.TYPE_INT32: ("int32", 32, True), _FD.TYPE_SINT32: ("sint32", 32, True),
        _FD.TYPE_SFIXED32: ("sfixed32", 32, True), _FD.TYPE_INT64: ("int64", 64, True),
        _FD.TYPE_SINT64: ("sint64", 64, True), _FD.TYPE_SFIXED64: ("sfixed64", 64, True),
        _FD.TYPE_UINT32: ("uint32", 32, False), _FD.TYPE_FIXED32: ("fixed32", 32, False),
        _FD.TYPE_UINT64: ("uint64", 64, False), _FD.TYPE_FIXED64: ("fixed64", 64, False),
    }[field.type]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= number <= high:
        raise ValueError(f"expected an integer that fits {type_name}, found {number}")
    return number


def _scalar(field, value):
    t = field.type
    if t in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, found {_shown(value)}")
        return float(value)
    if t == _FD.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, found {_shown(value)}")
        return value
    if t == _FD.TYPE_STRING:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, found {_shown(value)}")
        return value
    if t == _FD.TYPE_ENUM:
        names = _enum_names(field.enum_type)
        key = value.replace("_", "-").lower() if isinstance(value, str) else None
        if key not in names:
            raise ValueError(f"expected one of {', '.join(names)}, found {_shown(value)}")
        return names[key]
    if t == _FD.TYPE_MESSAGE:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, found {_shown(value)}")
        message = field.message_type._concrete_class()
        for key, item in value.items():
            inner = _resolve(field.message_type, key.replace("-", "_"))
            if inner is None:
                raise ValueError(f"unknown field `{key}`")
            _set(message, inner, item)
        return message
    return _integer(field, value)


def _is_repeated(field):
    # protobuf >= 5.28 has is_repeated; its label is going away.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == _FD.LABEL_REPEATED


def _set(message, field, value):
    if _is_repeated(field):
        if not isinstance(value, list):
            raise ValueError("expected a list")
        items = [_scalar(field, v) for v in value]
        target = getattr(message, field.name)
        if field.type == _FD.TYPE_MESSAGE:
            for item in items:
                target.add().CopyFrom(item)
        else:
            target.extend(items)
    elif field.type == _FD.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(_scalar(field, value))
    else:
        setattr(message, field.name, _scalar(field, value))


def to_spec(table, label, where):
    """A fault table → (``faultd.v1.FaultSpec``, description); ``where`` locates errors."""
    if "action" not in table:
        raise _Located(where, f"missing field `action` (one of {', '.join(action_names())})")
    name = table["action"]
    field = pb.Action.DESCRIPTOR.fields_by_name.get(name.replace("-", "_")) if isinstance(name, str) else None
    if field is None:
        shown = f'"{name}"' if isinstance(name, str) else _shown(name)
        raise _Located(where + ["action"], f"action: {shown} is not an action (one of {', '.join(action_names())})")
    target, spec = pb.Target(), pb.FaultSpec()
    action = field.message_type._concrete_class()
    given, words = set(), [_dashed(field.name)]
    for key, value in table.items():
        if key == "action":
            continue
        wire = key.replace("-", "_")
        if wire == "port" and isinstance(value, str):
            _port_range(target, value, given, where + [key])
            words.append(f"port={value}")
            continue
        found = next(
            ((m, f) for m in (target, action, spec) if (f := _resolve(m.DESCRIPTOR, wire)) is not None),
            None,
        )
        if found is None:
            keys = [*pb.Target.DESCRIPTOR.fields, *field.message_type.fields,
                    *(f for f in pb.FaultSpec.DESCRIPTOR.fields if f.type != _FD.TYPE_MESSAGE)]
            raise _Located(where + [key], f"unknown field `{key}` for {_dashed(field.name)} "
                           f"(fields: {', '.join(_dashed(_short(f.name)) for f in keys)})", at_key=True)
        message, inner = found
        if (id(message), inner.name) in given:
            raise _Located(where + [key], f"`{key}` is given twice", at_key=True)
        given.add((id(message), inner.name))
        try:
            _set(message, inner, value)
        except ValueError as e:
            raise _Located(where + [key], f"{inner.name}: {e}") from None
        words.append(f"{key}={_shown(value)}")
    if (id(spec), "label") not in given:
        spec.label = label
    spec.target.CopyFrom(target)
    getattr(spec.action, field.name).CopyFrom(action)
    return spec, " ".join(words)


def _port_range(target, text, given, where):
    """``port = "2379-2381"``: the range into the target's ``port`` and ``port_end``."""
    try:
        first, last = parse_ports(text)
    except ValueError as e:
        raise _Located(where, f"port: {e}") from None
    if last is not None and (id(target), "port_end") in given:
        raise _Located(where, "port: a range, and `port-end` is given too")
    target.port = first
    given.add((id(target), "port"))
    if last is not None:
        target.port_end = last
        given.add((id(target), "port_end"))


# --- where a key is in the text ---------------------------------------------------------

_STEP = re.compile(r"^[ \t]*\[\[[ \t]*step[ \t]*\]\]", re.M)
_HEADER = re.compile(r"^[ \t]*\[", re.M)


def _locate(text, where, at_key=False):
    """(line, column) of the value (or key) a path of keys names, as well as it can be
    found: ``[]`` the start, ``[i]`` step i's header, ``[i, "at"]`` its value,
    ``[i, "faults", j, "port"]`` a key of its j-th fault."""
    pos = 0
    if where and isinstance(where[0], int):
        headers = list(_STEP.finditer(text))
        if where[0] < len(headers):
            pos = headers[where[0]].start()
            end = _HEADER.search(text, headers[where[0]].end())
            region_end = end.start() if end else len(text)
            for i, key in enumerate(where[1:]):
                if isinstance(key, int):
                    pos = _nth_table(text, pos, region_end, key)
                    continue
                m = re.compile(rf"(?<![\w-]){re.escape(key)}\s*=\s*").search(text, pos, region_end)
                if not m:
                    break
                last = i == len(where) - 2
                pos = m.start() if last and at_key else m.end()
    elif where and where[0] == "heal":
        m = re.search(r"^\s*heal\s*=\s*", text, re.M)
        pos = m.end() if m else 0
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, column


def _nth_table(text, pos, end, n):
    """The position of the n-th inline table of the array starting at or after pos."""
    depth, seen = 0, -1
    for i in range(pos, end):
        c = text[i]
        if c == "{":
            if depth == 0:
                seen += 1
                if seen == n:
                    return i
            depth += 1
        elif c == "}":
            depth -= 1
    return pos


# --- the model --------------------------------------------------------------------------

_STEP_KEYS = {"at", "name", "for", "repeat", "every", "fault", "faults", "remove"}
_FILE_KEYS = {"name", "label", "heal", "step"}
# At one time: lifts, then removals, then adds (as the Rust library orders them).
_LIFT, _REMOVE, _ADD = 0, 1, 2


class Step:
    def __init__(self, number, name, at, lasts, repeat, every, faults, remove):
        self.number, self.name, self.at, self.lasts = number, name, at, lasts
        self.repeat, self.every = repeat, every
        self.faults = faults  # [(spec, description)] or None
        self.remove = remove  # None, "all", or the number of a step


class Scenario:
    """A scenario that parsed and checked. ``timeline``: (at seconds, kind, step index,
    round) in the order it runs; ``heal_at``: when the run heals and ends."""

    def __init__(self, name, steps, heal_at, timeline):
        self.name, self.steps, self.heal_at, self.timeline = name, steps, heal_at, timeline

    @classmethod
    def from_path(cls, path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        stem = re.sub(r"\.[^./]*$", "", str(path).rsplit("/", 1)[-1])
        return cls._parse(text, str(path), stem)

    @classmethod
    def from_string(cls, text, origin="<string>"):
        return cls._parse(text, origin, "scenario")

    @classmethod
    def _parse(cls, text, origin, stem):
        if _toml is None:
            raise RuntimeError("scenarios need Python >= 3.11 (tomllib) or the tomli package")
        try:
            doc = _toml.loads(text)
        except _toml.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
            line, column = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
            raise ScenarioError(origin, line, column, message) from None
        try:
            return cls._check(doc, stem)
        except _Located as e:
            line, column = _locate(text, e.where, e.at_key)
            raise ScenarioError(origin, line, column, e.message) from None

    @classmethod
    def _check(cls, doc, stem):
        for key in doc:
            if key not in _FILE_KEYS:
                raise _Located([], f"unknown field `{key}`, expected one of {', '.join(sorted(_FILE_KEYS))}")
        name = doc.get("name", stem)
        label = doc.get("label", f"scenario:{name}")
        raw_steps = doc.get("step", [])
        if not raw_steps:
            raise _Located([], "no [[step]]: a scenario needs at least one step")
        steps = []
        for i, raw in enumerate(raw_steps):
            steps.append(_check_step(i, raw, steps, label))
        timeline = []
        for index, step in enumerate(steps):
            for round_ in range(1, step.repeat + 1):
                start = step.at + step.every * (round_ - 1)
                kind = _ADD if step.faults is not None else _REMOVE
                timeline.append((start, kind, index, round_))
                if kind == _ADD and step.lasts is not None:
                    timeline.append((start + step.lasts, _LIFT, index, round_))
        # Times to the microsecond, so that float sums order like the Rust durations.
        timeline.sort(key=lambda p: (round(p[0], 6), p[1], p[2], p[3]))
        last = timeline[-1][0] if timeline else 0.0
        heal_at = last
        if "heal" in doc:
            try:
                heal_at = parse_offset(doc["heal"])
            except ValueError as e:
                raise _Located(["heal"], f"heal: {e}") from None
            if heal_at < last:
                raise _Located(["heal"], f"heal: {doc['heal']} is before the last planned action, at {last:g}s")
        return cls(name, steps, heal_at, timeline)

    # --- playing ---------------------------------------------------------------------

    def plan(self):
        """The timeline as rows (dicts, the keys of ``faultctl run --json``), not run."""
        rows = [self._row("start", None, 0.0)]
        for at, kind, index, round_ in self.timeline:
            step = self.steps[index]
            row = self._row("add" if kind == _ADD else "remove", (index, round_), at)
            if step.faults is not None:
                row["faults"] = [d for _, d in step.faults]
            elif step.remove == "all":
                row["faults"] = ["every fault added"]
            else:
                row["faults"] = [f"the faults of step {step.remove}"]
            rows.append(row)
        heal = self._row("heal", None, self.heal_at)
        heal["faults"] = ["every fault still in force"]
        rows.append(heal)
        return rows

    def _row(self, event, planned, at):
        step = self.steps[planned[0]] if planned else None
        return {
            "event": event,
            "step": step.number if step else None,
            "name": step.name if step else None,
            "round": planned[1] if planned else None,
            "rounds": step.repeat if step else None,
            "at_ms": round(at * 1000),
            "elapsed_ms": None,
            "unix_ms": None,
            "fault_ids": [],
            "faults": [],
            "note": None,
        }

    def run(self, client, report=None, stop=None):
        """Plays the scenario through ``client`` (a :class:`faultd.Client`, whose session
        the faults are bound to), calling ``report(row)`` for each row as it happens, until
        its end or until ``stop`` (a ``threading.Event``) is set; then removes everything
        it added. Returns the rows; raises :class:`ScenarioFailed` when faultd refused a
        step (after the heal)."""
        stop = stop or threading.Event()
        rows = []
        start, start_unix = time.monotonic(), time.time()

        def emit(row):
            elapsed = time.monotonic() - start
            row["elapsed_ms"] = round(elapsed * 1000)
            row["unix_ms"] = round((start_unix + elapsed) * 1000)
            rows.append(row)
            if report:
                report(row)

        emit(self._row("start", None, 0.0))
        held = []  # [step index, round, id, description]
        failure, note = None, "end"
        for planned in [*self.timeline, None]:
            due = planned[0] if planned else self.heal_at
            if stop.wait(max(0.0, start + due - time.monotonic())):
                note = "stopped"
                break
            if planned is None:
                break
            try:
                self._apply(planned, client, held, emit)
            except FaultdError as e:
                failure, note = (self._context(planned), e), "failed"
                break
        heal = self._row("heal", None, self.heal_at)
        heal["note"] = note
        healed = _remove(client, held, heal)
        emit(heal)
        if failure:
            raise ScenarioFailed(failure[0], failure[1], rows)
        if healed:
            raise ScenarioFailed("heal", healed, rows)
        return rows

    def _context(self, planned):
        step = self.steps[planned[2]]
        name = f' "{step.name}"' if step.name else ""
        rounds = f" round {planned[3]}/{step.repeat}" if step.repeat > 1 else ""
        return f"step {step.number}{name}{rounds} at {_fmt(planned[0])}"

    def _apply(self, planned, client, held, emit):
        at, kind, index, round_ = planned
        step = self.steps[index]
        row = self._row("add" if kind == _ADD else "remove", (index, round_), at)
        if kind == _ADD:
            try:
                for spec, description in step.faults:
                    request = pb.AddFaultRequest(spec=spec, session_id=client.session_id)
                    fault = client._call("AddFault", request)
                    held.append([index, round_, fault.id, description])
                    row["fault_ids"].append(fault.id)
                    row["faults"].append(description)
            finally:
                emit(row)
            return
        if kind == _LIFT:
            leaving = [h for h in held if h[0] == index and h[1] == round_]
        elif step.remove == "all":
            leaving = list(held)
        else:
            leaving = [h for h in held if h[0] == step.remove - 1]
        for h in leaving:
            held.remove(h)
        error = _remove(client, leaving, row)
        emit(row)
        if error:
            raise error


def _remove(client, faults, row):
    """Removes each fault (gone already is fine); the first other error, after the rest."""
    first = None
    for _, _, fault_id, description in faults:
        try:
            client.remove(fault_id, missing_ok=True)
        except FaultdError as e:
            first = first or e
            continue
        row["fault_ids"].append(fault_id)
        row["faults"].append(description)
    return first


def _check_step(i, raw, earlier, label):
    if not isinstance(raw, dict):
        raise _Located([i], "a step is a table ([[step]])")
    for key in raw:
        if key not in _STEP_KEYS:
            raise _Located([i, key], f"unknown field `{key}`, expected one of {', '.join(sorted(_STEP_KEYS))}",
                           at_key=True)
    if "at" not in raw:
        raise _Located([i], "missing field `at`")
    name = raw.get("name")
    if name is not None and any(s.name == name for s in earlier):
        raise _Located([i, "name"], f'name: "{name}" names an earlier step already')

    def duration(key, zero_ok):
        try:
            return (parse_offset if zero_ok else parse_duration)(raw[key])
        except ValueError as e:
            raise _Located([i, key], f"{key}: {e}") from None

    at = duration("at", True)
    lasts = duration("for", False) if "for" in raw else None
    repeat = raw.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise _Located([i, "repeat"], f"repeat: {repeat} is not a count of at least 1")
    if "every" in raw and repeat < 2:
        raise _Located([i, "every"], "every: only with a repeat of 2 or more")
    if repeat >= 2 and "every" not in raw:
        raise _Located([i, "repeat"], "repeat: needs `every` (how far apart the rounds start)")
    every = duration("every", False) if "every" in raw else 0.0
    if repeat >= 2 and lasts is not None and lasts > every:
        raise _Located([i, "every"], f"every: {raw['every']} is shorter than `for` ({raw['for']}): the rounds would overlap")
    tables = []
    if "fault" in raw:
        tables.append((raw["fault"], [i, "fault"]))
    if "faults" in raw:
        if not raw["faults"]:
            raise _Located([i, "faults"], "faults: an empty list")
        tables += [(t, [i, "faults", j]) for j, t in enumerate(raw["faults"])]
    remove = raw.get("remove")
    faults = None
    if remove is not None and tables:
        raise _Located([i, "remove"], "remove: a step either adds faults (`fault`, `faults`) or removes them, not both")
    if remove is None and not tables:
        raise _Located([i], "a step needs `fault`, `faults` or `remove`")
    if remove is not None:
        if lasts is not None:
            raise _Located([i, "for"], "for: a `remove` step has nothing to keep for a while")
        if remove != "all":
            adders = [s for s in earlier if s.faults is not None]
            match = next((s for s in adders if s.name == remove), None)
            if match is None:
                names = ", ".join(f'"{s.name}"' for s in adders if s.name) or "none"
                raise _Located([i, "remove"], f'remove: "{remove}" is not the name of an earlier step '
                               f'that adds faults (names: {names}; or "all")')
            remove = match.number
    else:
        faults = []
        for table, where in tables:
            if not isinstance(table, dict):
                raise _Located(where, "a fault is a table: { action = \"drop\", port = 80 }")
            faults.append(to_spec(table, label, where))
    return Step(i + 1, name, at, lasts, repeat, every, faults, remove)
