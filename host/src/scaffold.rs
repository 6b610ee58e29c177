//! `wasmwire new NAME --lang rust|python|js`: a service in a folder of its own — sources,
//! the WIT it implements (for Python and JavaScript), a Makefile whose `make` builds
//! `NAME.wasm`, and a `wasmwire.toml` that runs it. The README's "Your first service" is
//! this command.
//!
//! Each language's service is the same small one: it counts `hello` events (state kept
//! across calls of an awake period) and answers a `hello` message on its session.

use std::path::{Path, PathBuf};

/// The languages `new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the wasmwire-guest SDK (cargo and the wasm32-wasip2 target).
    Rust,
    /// Python, with componentize-py (installed by `make` into `.venv/`).
    Python,
    /// JavaScript, with ComponentizeJS (installed by `make` into `node_modules/`).
    Js,
}

/// Why a service could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a valid service and package name.
    #[error(
        "invalid service name {0:?}: use 1 to 48 lowercase letters, digits, '-' or '_', starting with a letter"
    )]
    BadName(String),
    /// The folder exists already: nothing is overwritten.
    #[error("{} exists already: choose another name or folder (nothing was written)", .0.display())]
    Exists(PathBuf),
    /// The Rust SDK was not found.
    #[error(
        "the wasmwire-guest SDK is not at {}: pass --sdk with the path of guest-sdk/ in a wasmwire checkout",
        .0.display()
    )]
    NoSdk(PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The WIT every service implements, written into Python and JavaScript scaffolds, with
/// the `wasi:keyvalue` package its world imports.
const WIT: &[(&str, &str)] = &[
    ("wit/service.wit", include_str!("../../wit/service.wit")),
    (
        "wit/deps/keyvalue/store.wit",
        include_str!("../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "wit/deps/keyvalue/atomic.wit",
        include_str!("../../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        include_str!("../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "wit/deps/keyvalue/world.wit",
        include_str!("../../wit/deps/keyvalue/world.wit"),
    ),
];

/// The versions of the guest crates the samples are built and tested with: a new Rust
/// service starts from the same lock file.
const RUST_LOCK: &str = include_str!("../../sample-services/Cargo.lock");

/// The pinned toolchain (with the wasm32-wasip2 target), as the repository's.
const RUST_TOOLCHAIN: &str = include_str!("../../rust-toolchain.toml");

/// componentize-py's version, as the Makefile pins it for the samples.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// ComponentizeJS's version, as sample-services/greeter-js/package.json pins it.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The SDK of the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(PathBuf::new, |p| p.join("guest-sdk"))
}

/// Checks a service name: it names the folder, the package and the manifest entry.
fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ScaffoldError::BadName(name.to_string()))
    }
}

/// Writes the service `name` in `lang` into `dir` (which must not exist) and returns the
/// files written, relative to `dir`.
pub fn scaffold(
    name: &str,
    lang: Lang,
    dir: &Path,
    sdk: &Path,
) -> Result<Vec<&'static str>, ScaffoldError> {
    check_name(name)?;
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let files: Vec<(&'static str, String)> = match lang {
        Lang::Rust => {
            let sdk = std::fs::canonicalize(sdk)
                .ok()
                .filter(|p| p.join("Cargo.toml").is_file())
                .ok_or_else(|| ScaffoldError::NoSdk(sdk.to_path_buf()))?;
            vec![
                ("Cargo.toml", rust_cargo_toml(name, &sdk)),
                ("Cargo.lock", RUST_LOCK.to_string()),
                ("src/lib.rs", RUST_LIB.to_string()),
                (".cargo/config.toml", RUST_CARGO_CONFIG.to_string()),
                ("Makefile", rust_makefile(name)),
                // The toolchain wasmwire is built and tested with, wasm32-wasip2 included.
                ("rust-toolchain.toml", RUST_TOOLCHAIN.to_string()),
            ]
        }
        Lang::Python => vec![
            ("app.py", PYTHON_APP.to_string()),
            ("Makefile", python_makefile(name)),
        ],
        Lang::Js => vec![
            ("app.js", JS_APP.to_string()),
            ("package.json", js_package(name)),
            ("Makefile", js_makefile(name)),
        ],
    };
    let mut files = files;
    if lang != Lang::Rust {
        files.extend(WIT.iter().map(|(path, text)| (*path, text.to_string())));
    }
    files.push(("wasmwire.toml", manifest(name, lang)));
    files.push((".gitignore", GITIGNORE.to_string()));
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Write { path, source })?;
        written.push(rel);
    }
    Ok(written)
}

fn manifest(name: &str, lang: Lang) -> String {
    let memory = match lang {
        Lang::Rust => "",
        // The Python and JavaScript runtimes live in the component's own memory.
        Lang::Python | Lang::Js => "memory = \"64MiB\"\n",
    };
    format!(
        "# Runs {name} on this machine: `wasmwire run` here, then from another terminal\n\
         #   wasmwire call 127.0.0.1:7400 {name} hello '{{\"name\": \"ann\"}}'\n\
         #   wasmwire send 127.0.0.1:7400 {name} hello ann\n\n\
         [host]\nlisten = \"127.0.0.1:7400\"\nidentity = \".wasmwire/host.key\"\n\n\
         [[service]]\nname = \"{name}\"\ncomponent = \"{name}.wasm\"\nchannel = 1\nexpose = true\n\
         options = {{ greeting = \"Hello\" }}\n{memory}"
    )
}

const GITIGNORE: &str = "/target\n/.venv\n/node_modules\n/.wasmwire\n/*.wasm\n__pycache__/\n";

fn rust_cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         # A workspace of its own, wherever the folder is.\n[workspace]\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\nwasmwire-guest = {{ path = {sdk:?} }}\n\
         serde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n\
         # Small and fast to wake: the same settings as wasmwire's sample services.\n\
         [profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\nstrip = true\npanic = \"abort\"\n",
        sdk = sdk.display().to_string()
    )
}

const RUST_CARGO_CONFIG: &str = "[target.wasm32-wasip2]\n\
# A 64 KiB stack instead of Rust's default 1 MiB: the stack sits at the bottom of linear\n\
# memory, so a small one keeps the pages a wakeup touches few (cheaper wakes).\n\
rustflags = [\"-C\", \"link-arg=-zstack-size=65536\"]\n";

fn rust_makefile(name: &str) -> String {
    let artifact = name.replace('-', "_");
    format!(
        "# `make` builds {name}.wasm; `wasmwire run` (here) serves it.\n\
         CARGO ?= cargo\nTARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)\n\n\
         {name}.wasm: Cargo.toml $(wildcard src/*.rs)\n\
         \t$(CARGO) build --release --target wasm32-wasip2 --target-dir $(TARGET_DIR)\n\
         \tcp $(TARGET_DIR)/wasm32-wasip2/release/{artifact}.wasm $@\n"
    )
}

const RUST_LIB: &str = r#"//! A wasmwire service: counts `hello` events and answers `hello` messages.

use serde::Deserialize;
use wasmwire_guest::{Event, Message, Options, Reply, Service, SessionId, export_service};

#[derive(Default)]
struct App {
    greeting: String,
    /// Kept across calls while the instance is awake; a new awake period starts at 0.
    hellos: u64,
}

#[derive(Deserialize)]
struct AppOptions {
    #[serde(default = "hello")]
    greeting: String,
}

fn hello() -> String {
    "Hello".into()
}

#[derive(Deserialize)]
struct HelloParams {
    name: String,
}

impl Service for App {
    // The host refuses any other message kind or event name before it reaches the guest.
    const MESSAGES: &'static [&'static str] = &["hello"];
    const EVENTS: &'static [&'static str] = &["hello"];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        self.greeting = options.parse::<AppOptions>()?.greeting;
        Ok(())
    }

    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        let name = String::from_utf8_lossy(message.payload);
        let text = format!("{}, {name}!", self.greeting);
        let _ = wasmwire_guest::send(session, "hello", text.as_bytes());
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.params::<HelloParams>() {
            Ok(p) => {
                self.hellos += 1;
                Reply::json(&serde_json::json!({
                    "text": format!("{}, {}!", self.greeting, p.name),
                    "count": self.hellos,
                }))
            }
            Err(e) => Reply::error(format!("hello wants {{\"name\": ...}}: {e}")),
        }
    }
}

export_service!(App);
"#;

fn python_makefile(name: &str) -> String {
    format!(
        "# `make` builds {name}.wasm with componentize-py {v}, installed on first use into .venv/\n\
         # (or give COMPONENTIZE_PY=path); `wasmwire run` (here) serves it.\n\
         PYTHON ?= python3\nCOMPONENTIZE_PY ?= .venv/bin/componentize-py\n\n\
         {name}.wasm: $(wildcard *.py) wit/service.wit $(COMPONENTIZE_PY)\n\
         \t$(COMPONENTIZE_PY) -d wit -w service componentize app -o $@\n\n\
         .venv/bin/componentize-py:\n\
         \t$(PYTHON) -m venv .venv\n\
         \t.venv/bin/pip install --quiet --disable-pip-version-check componentize-py=={v}\n",
        v = COMPONENTIZE_PY
    )
}

const PYTHON_APP: &str = r#""""A wasmwire service: counts `hello` events and answers `hello` messages.

Implements the `service` world of wit/service.wit (componentize-py makes the bindings).
Module globals are the instance's state: kept across calls while it is awake.
"""

import json
from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import lifecycle
from wit_world.imports import host, types

greeting = "Hello"
hellos = 0


class Lifecycle(exports.Lifecycle):
    def describe(self) -> lifecycle.Description:
        return lifecycle.Description(messages=["hello"], events=["hello"])

    def wakeup(self, options: str) -> None:
        global greeting, hellos
        parsed = json.loads(options) if options else {}
        greeting = str(parsed.get("greeting", "Hello")) if isinstance(parsed, dict) else "Hello"
        hellos = 0

    def sleep(self) -> None:
        pass

    def on_connect(self, session: types.SessionInfo) -> None:
        pass

    def on_disconnect(self, session: int) -> None:
        pass

    def on_message(self, session: int, kind: str, payload: bytes) -> None:
        name = payload.decode("utf-8", "replace")
        try:
            host.send(session, "hello", f"{greeting}, {name}!".encode())
        except Err as e:
            host.log(types.Level.WARN, f"could not answer on session {session}: {e.value}")

    def on_event(self, caller: Optional[int], name: str, params: str) -> str:
        global hellos
        try:
            who = json.loads(params)["name"]
        except (ValueError, KeyError, TypeError):
            raise Err('hello wants {"name": ...}')
        hellos += 1
        return json.dumps({"text": f"{greeting}, {who}!", "count": hellos})

    def on_timer(self, timer: int) -> None:
        pass
"#;

fn js_package(name: &str) -> String {
    format!(
        "{{\n  \"name\": \"{name}\",\n  \"version\": \"0.1.0\",\n  \"private\": true,\n  \"type\": \"module\",\n  \"main\": \"app.js\",\n  \"devDependencies\": {{\n    \"@bytecodealliance/componentize-js\": \"{v}\"\n  }}\n}}\n",
        v = COMPONENTIZE_JS
    )
}

fn js_makefile(name: &str) -> String {
    format!(
        "# `make` builds {name}.wasm with ComponentizeJS {v}, installed on first use into\n\
         # node_modules/ (or give COMPONENTIZE_JS=path); `wasmwire run` (here) serves it.\n\
         NPM ?= npm\nCOMPONENTIZE_JS ?= node_modules/.bin/componentize-js\n\n\
         {name}.wasm: $(wildcard *.js) wit/service.wit $(COMPONENTIZE_JS)\n\
         \t$(COMPONENTIZE_JS) --wit wit --world-name service -d http fetch-event -o $@ app.js\n\n\
         node_modules/.bin/componentize-js: package.json\n\
         \t$(NPM) install --no-audit --no-fund\n",
        v = COMPONENTIZE_JS
    )
}

const JS_APP: &str = r#"// A wasmwire service: counts `hello` events and answers `hello` messages.
//
// Implements the `service` world of wit/service.wit (ComponentizeJS makes the bindings).
// Module variables are the instance's state: kept across calls while it is awake. A
// thrown string becomes the event's error; a thrown Error traps the instance.

import { log, send } from 'wasmwire:service/host@0.1.4';

let greeting = 'Hello';
let hellos = 0;

export const lifecycle = {
  describe() {
    return { messages: ['hello'], events: ['hello'] };
  },

  wakeup(options) {
    const o = options ? JSON.parse(options) : {};
    greeting = o && typeof o.greeting === 'string' ? o.greeting : 'Hello';
    hellos = 0;
  },

  sleep() {},

  onConnect(_session) {},

  onDisconnect(_session) {},

  onMessage(session, _kind, payload) {
    const name = new TextDecoder().decode(payload);
    try {
      send(session, 'hello', new TextEncoder().encode(`${greeting}, ${name}!`));
    } catch (e) {
      log('warn', `could not answer on session ${session}: ${e && e.payload ? e.payload.tag : e}`);
    }
  },

  onEvent(_caller, _name, params) {
    let who;
    try {
      who = JSON.parse(params).name;
    } catch (_e) {
      who = undefined;
    }
    if (typeof who !== 'string') throw 'hello wants {"name": ...}';
    hellos += 1;
    return JSON.stringify({ text: `${greeting}, ${who}!`, count: hellos });
  },

  onTimer(_timer) {},
};
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let dir = std::env::temp_dir().join(format!("wasmwire-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for bad in ["", "Greeter", "1st", "a b", "../x"] {
            assert!(matches!(
                scaffold(bad, Lang::Python, &dir, Path::new(".")),
                Err(ScaffoldError::BadName(_))
            ));
        }
        let files = scaffold("greeter", Lang::Python, &dir, Path::new(".")).unwrap();
        assert!(files.contains(&"app.py") && files.contains(&"wit/service.wit"));
        assert!(files.contains(&"wit/deps/keyvalue/store.wit"));
        let toml = std::fs::read_to_string(dir.join("wasmwire.toml")).unwrap();
        assert!(toml.contains("component = \"greeter.wasm\""));
        assert!(matches!(
            scaffold("greeter", Lang::Python, &dir, Path::new(".")),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            scaffold("x", Lang::Rust, &dir.join("x"), &dir.join("nowhere")),
            Err(ScaffoldError::NoSdk(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
