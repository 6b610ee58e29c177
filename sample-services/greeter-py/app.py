"""greeter-py: the greeter sample in Python, built with componentize-py from wit/ alone.

describe: messages ["hello"], events ["greet", "stats", "crash"].
wakeup reads the JSON option `greeting` (default "Hello").
greet {"name": N} -> {"text": "<greeting>, N!", "count": greets so far this awake period,
                      "total": greets ever (kept with wasi:keyvalue: it survives sleep,
                      a crash and a host restart)}
stats             -> {"count": greets so far this awake period}
crash             -> traps the instance (the host contains it and restarts it on demand)
message hello N   -> sends back "hello" "<greeting>, N!" on the same session

State lives in module globals: one instance is one Python interpreter, kept for the
whole awake period, and a new awake period starts from a fresh instance. What must
outlive it goes in the instance's own bucket, through componentize-py's bindings of the
standard wasi:keyvalue interfaces (`store.open("default")`, `atomics.increment`).
"""

import json
from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import lifecycle
from wit_world.imports import atomics, host, store, types

greeting = "Hello"
greets = 0


def greet(name: str) -> str:
    return f"{greeting}, {name}!"


def count_total() -> int:
    """Adds one to the greets kept in the instance's own bucket; returns the new total."""
    with store.open("default") as bucket:
        return atomics.increment(bucket, "greets", 1)


class Lifecycle(exports.Lifecycle):
    def describe(self) -> lifecycle.Description:
        return lifecycle.Description(messages=["hello"], events=["greet", "stats", "crash"])

    def wakeup(self, options: str) -> None:
        global greeting, greets
        try:
            parsed = json.loads(options) if options else {}
        except ValueError as e:
            raise Err(f"options are not JSON: {e}")
        value = parsed.get("greeting", "Hello") if isinstance(parsed, dict) else "Hello"
        if not isinstance(value, str):
            raise Err("option `greeting` must be a string")
        greeting = value
        greets = 0

    def sleep(self) -> None:
        host.log(types.Level.INFO, f"going to sleep after {greets} greets")

    def on_connect(self, session: types.SessionInfo) -> None:
        pass

    def on_disconnect(self, session: int) -> None:
        pass

    def on_message(self, session: int, kind: str, payload: bytes) -> None:
        if kind == "hello":
            name = payload.decode("utf-8", "replace")
            try:
                host.send(session, "hello", greet(name).encode())
            except Err as e:
                host.log(types.Level.WARN, f"could not answer on session {session}: {e.value}")

    def on_event(self, caller: Optional[int], name: str, params: str) -> str:
        global greets
        if name == "greet":
            try:
                p = json.loads(params) if params else None
            except ValueError as e:
                raise Err(f"params are not JSON: {e}")
            who = p.get("name", "world") if isinstance(p, dict) else "world"
            greets += 1
            try:
                total = count_total()
            except Err as e:
                raise Err(f"could not keep the total: {e.value}")
            return json.dumps({"text": greet(str(who)), "count": greets, "total": total})
        if name == "stats":
            return json.dumps({"count": greets})
        if name == "crash":
            crash()
        raise Err(f"unknown event {name}")

    def on_timer(self, timer: int) -> None:
        pass


def crash() -> None:
    # An exception other than `Err` escaping an export is not turned into an error result:
    # componentize-py prints the traceback to stderr and its runtime panics, which traps
    # (`unreachable`; checked with componentize-py 0.25.1).
    raise RuntimeError("crash requested")
