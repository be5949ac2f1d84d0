//! What a command tells its user: text lines on stdout as it goes, or with
//! `--json` one JSON document on stdout at the end (errors included), for
//! scripts. Warnings and errors always go to stderr as text too.
//!
//! Every command fills the document through `set`/`push`; `finish` adds
//! `command`, `ok`, `exit_status` and (on failure) `error`, and prints it.
//! The schema of each command's document is in the README.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt::Display;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    Quiet,
    #[default]
    Normal,
    Verbose,
}

struct Out {
    command: String,
    json: bool,
    verbosity: Verbosity,
    doc: Mutex<Map<String, Value>>,
}

static OUT: OnceLock<Out> = OnceLock::new();

fn out() -> &'static Out {
    OUT.get_or_init(|| Out {
        command: String::new(),
        json: false,
        verbosity: Verbosity::Normal,
        doc: Mutex::new(Map::new()),
    })
}

fn doc() -> std::sync::MutexGuard<'static, Map<String, Value>> {
    out().doc.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the output mode, once, before the command runs.
pub fn init(command: &str, json: bool, verbosity: Verbosity) {
    let _ = OUT.set(Out {
        command: command.to_string(),
        json,
        verbosity,
        doc: Mutex::new(Map::new()),
    });
}

pub fn json() -> bool {
    out().json
}

pub fn quiet() -> bool {
    out().json || out().verbosity == Verbosity::Quiet
}

/// A result line (suppressed by --json and --quiet).
pub fn line(s: impl Display) {
    if !quiet() {
        println!("{s}");
    }
}

/// A detail line, only with --verbose (on stderr, so stdout stays what
/// scripts parse).
pub fn detail(s: impl Display) {
    if out().verbosity == Verbosity::Verbose {
        eprintln!("sparsebak: {s}");
    }
}

/// A warning: always on stderr; with --json also in `warnings`.
pub fn warn(s: impl Display) {
    let s = s.to_string();
    eprintln!("sparsebak: warning: {s}");
    push("warnings", s);
}

/// An error that does not stop the command (one volume of several):
/// always on stderr; with --json also in `errors`.
pub fn error(s: impl Display) {
    let s = s.to_string();
    eprintln!("sparsebak: error: {s}");
    push("errors", s);
}

/// Sets a field of the JSON document.
pub fn set(key: &str, v: impl Serialize) {
    let v = serde_json::to_value(v).unwrap_or(Value::Null);
    doc().insert(key.to_string(), v);
}

/// Appends to an array field of the JSON document.
pub fn push(key: &str, v: impl Serialize) {
    let v = serde_json::to_value(v).unwrap_or(Value::Null);
    let mut d = doc();
    match d
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(a) => a.push(v),
        other => *other = Value::Array(vec![v]),
    }
}

/// Prints the JSON document (with --json): the command, whether it
/// succeeded, its exit status, and the error that stopped it.
pub fn finish(status: i32, error: Option<&str>) {
    if !json() {
        return;
    }
    let mut d = doc();
    d.insert("command".into(), out().command.clone().into());
    d.insert("ok".into(), (status == 0).into());
    d.insert("exit_status".into(), status.into());
    if let Some(e) = error {
        d.insert("error".into(), e.into());
    }
    let v = Value::Object(std::mem::take(&mut *d));
    println!("{v}");
}
