// greeter-js: the greeter sample in JavaScript, built with ComponentizeJS from wit/ alone.
//
// describe: messages ["hello"], events ["greet", "stats", "crash"].
// wakeup reads the JSON option `greeting` (default "Hello").
// greet {"name": N} -> {"text": "<greeting>, N!", "count": greets so far this awake period,
//                      "total": greets ever (kept with wasi:keyvalue: it survives sleep,
//                      a crash and a host restart)}
// stats             -> {"count": greets so far this awake period}
// crash             -> traps the instance (the host contains it and restarts it on demand)
// message hello N   -> sends back "hello" "<greeting>, N!" on the same session
//
// State lives in module variables: one instance is one JS engine, kept for the whole
// awake period, and a new awake period starts from a fresh instance. What must outlive it
// goes in the instance's own bucket, through ComponentizeJS's bindings of the standard
// wasi:keyvalue interfaces (`open('default')`, `increment`).
//
// Errors: an export returning `result<_, string>` turns a thrown *string* into `err`. A
// thrown `Error` is not: the generated bindings cannot lower it as the string error (they
// log `expected a string, received [object]`), the engine aborts and the instance traps
// (`unreachable`), as any exception escaping the bindings does. `crash` relies on that
// (checked with ComponentizeJS 0.23.0).

import { log, send } from 'wasmwire:service/host@0.1.4';
import { open } from 'wasi:keyvalue/store@0.2.0-draft2';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft2';

let greeting = 'Hello';
let greets = 0;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function greet(name) {
  return `${greeting}, ${name}!`;
}

// The instance's own bucket, opened once per awake period (a handle is a resource the
// host keeps until it is dropped, and the JS engine drops it only when collected).
let bucket = null;

// Adds one to the greets kept in the instance's own bucket; returns the new total.
function countTotal() {
  try {
    bucket ??= open('default');
    return Number(increment(bucket, 'greets', 1n));
  } catch (e) {
    const tag = e && e.payload ? e.payload.tag : String(e);
    throw `could not keep the total: ${tag}`; // a string: an `err`, not a trap
  }
}

function parse(text, what) {
  try {
    return text ? JSON.parse(text) : null;
  } catch (e) {
    throw `${what} are not JSON: ${e.message}`; // a string: an `err`, not a trap
  }
}

export const lifecycle = {
  describe() {
    return { messages: ['hello'], events: ['greet', 'stats', 'crash'] };
  },

  wakeup(options) {
    const o = parse(options, 'options');
    const value = o && typeof o === 'object' && 'greeting' in o ? o.greeting : 'Hello';
    if (typeof value !== 'string') throw 'option `greeting` must be a string';
    greeting = value;
    greets = 0;
  },

  sleep() {
    log('info', `going to sleep after ${greets} greets`);
  },

  onConnect(_session) {},

  onDisconnect(_session) {},

  onMessage(session, kind, payload) {
    if (kind !== 'hello') return;
    try {
      send(session, 'hello', encoder.encode(greet(decoder.decode(payload))));
    } catch (e) {
      // A host error arrives as an Error whose `payload` is the WIT `error` variant.
      const tag = e && e.payload ? e.payload.tag : String(e);
      log('warn', `could not answer on session ${session}: ${tag}`);
    }
  },

  onEvent(_caller, name, params) {
    switch (name) {
      case 'greet': {
        const p = parse(params, 'params');
        const who = p && typeof p === 'object' && 'name' in p ? String(p.name) : 'world';
        greets += 1;
        const total = countTotal();
        return JSON.stringify({ text: greet(who), count: greets, total });
      }
      case 'stats':
        return JSON.stringify({ count: greets });
      case 'crash':
        // An Error (not a string) thrown out of an export: a trap, not an `err`.
        throw new Error('crash requested');
      default:
        throw `unknown event ${name}`;
    }
  },

  onTimer(_timer) {},
};
