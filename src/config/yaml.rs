//! The only module that knows which YAML library is used: parsing text into
//! nodes, decoding nodes into raw serde structs with the path of any error,
//! `${VAR}` interpolation, and a locator mapping YAML paths to source lines.
//!
//! serde_yaml (deprecated upstream) does the decoding; yaml-rust2's marked
//! event stream gives line numbers for paths. Swapping libraries means
//! rewriting this file only.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A parsed YAML node.
pub type Node = serde_yaml::Value;

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub message: String,
}

pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    match serde_yaml::from_str::<Node>(text) {
        Ok(Node::Null) => Ok(Node::Mapping(Default::default())),
        Ok(n) => Ok(n),
        Err(e) => {
            let loc = e.location();
            let mut message = e.to_string();
            // serde_yaml appends " at line X column Y"; we print it ourselves.
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            Err(SyntaxError {
                line: loc.as_ref().map(|l| l.line()),
                col: loc.as_ref().map(|l| l.column()),
                message,
            })
        }
    }
}

/// Decode a node into `T`. On error: the path below the node where it
/// happened (`pending.after`, `args[1]`) and a lowercase message.
pub fn decode<T: DeserializeOwned>(node: Node) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize::<_, T>(node).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut msg = e.into_inner().to_string();
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        // Point unknown-field errors at the offending key itself.
        let path = match unknown_field(&msg) {
            Some(field) if path.is_empty() => field.to_string(),
            Some(field) if path != field && !path.ends_with(&format!(".{field}")) => {
                format!("{path}.{field}")
            }
            Some(_) | None => path,
        };
        (path, msg)
    })
}

pub fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

/// A serde message about an unknown field, with the nearest expected field
/// named when one is a likely misspelling; other messages unchanged.
pub fn suggest(msg: &str) -> String {
    let Some(field) = unknown_field(msg) else {
        return msg.to_string();
    };
    let Some((_, expected)) = msg.split_once("expected ") else {
        return msg.to_string();
    };
    let nearest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(field, k), k))
        .min();
    match nearest {
        Some((d, k)) if d > 0 && d <= (field.len().max(k.len()) / 3).max(2) => {
            format!("unknown field `{field}` (did you mean `{k}`?); expected {expected}")
        }
        _ => msg.to_string(),
    }
}

/// Levenshtein distance between two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Remove the mapping key at `path` (as `decode` reports it: `a.b`,
/// `list[1].c`) from `node`; whether it was there.
pub fn remove_at(node: &mut Node, path: &str) -> bool {
    let mut segs: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                segs.push(rest[..i].to_string());
            }
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                segs.push(rest[..=end].to_string());
                rest = &rest[end + 1..];
            }
        } else if !rest.is_empty() {
            segs.push(rest.to_string());
        }
    }
    let Some(last) = segs.pop() else {
        return false;
    };
    let mut cur = node;
    for s in &segs {
        let next = if let Some(i) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            match i.parse::<usize>() {
                Ok(i) => cur.get_mut(i),
                Err(_) => None,
            }
        } else {
            cur.get_mut(s.as_str())
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match cur {
        Node::Mapping(m) => m.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// The string value of `key` in a mapping node.
pub fn get_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.get(key).and_then(Node::as_str)
}

/// A short description of a node's type, for messages.
pub fn type_name(node: &Node) -> &'static str {
    match node {
        Node::Null => "null",
        Node::Bool(_) => "a boolean",
        Node::Number(_) => "a number",
        Node::String(_) => "a string",
        Node::Sequence(_) => "a list",
        Node::Mapping(_) => "a map",
        Node::Tagged(_) => "a tagged value",
    }
}

/// Join a child segment onto a YAML path.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else if key.starts_with('[') {
        format!("{path}{key}")
    } else {
        format!("{path}.{key}")
    }
}

/// Replace `${VAR}` and `${VAR:-default}` in every string value below
/// `node`; `$${` is a literal `${`. Errors are `(path, message)`.
pub fn interpolate(
    node: &mut Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(String, String)>,
) {
    match node {
        Node::String(s) => match expand(s, env) {
            Ok(Some(new)) => *s = new,
            Ok(None) => {}
            Err(msg) => errors.push((path.to_string(), msg)),
        },
        Node::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &join(path, &format!("[{i}]")), env, errors);
            }
        }
        Node::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                interpolate(v, &join(path, &key_text(k)), env, errors);
            }
        }
        Node::Tagged(t) => interpolate(&mut t.value, path, env, errors),
        Node::Null | Node::Bool(_) | Node::Number(_) => {}
    }
}

/// A mapping key as it appears in a path: strings as they are, other
/// scalars as YAML writes them.
fn key_text(k: &Node) -> String {
    match k {
        Node::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Every string value below `node` that is still a `TODO` placeholder
/// (`sweeper init` writes them where it could not decide): `(path, message)`.
pub fn todos(node: &Node, path: &str, out: &mut Vec<(String, String)>) {
    match node {
        Node::String(s) if s.trim() == "TODO" || s.trim_start().starts_with("TODO:") => out.push((
            path.to_string(),
            "still a TODO (left by `sweeper init`): fill in the value".to_string(),
        )),
        Node::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                todos(item, &join(path, &format!("[{i}]")), out);
            }
        }
        Node::Mapping(map) => {
            for (k, v) in map {
                let key = key_text(k);
                if key == "TODO" {
                    out.push((
                        join(path, &key),
                        "still a TODO (left by `sweeper init`): name it".to_string(),
                    ));
                }
                todos(v, &join(path, &key), out);
            }
        }
        Node::Tagged(t) => todos(&t.value, path, out),
        Node::String(_) | Node::Null | Node::Bool(_) | Node::Number(_) => {}
    }
}

/// Expand one string; `Ok(None)` when it has no `$`.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if !s.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        let Some(inner_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = inner_start.find('}') else {
            return Err(format!("unterminated `${{` in {s:?}"));
        };
        let inner = &inner_start[..end];
        let (name, default) = match inner.find(":-") {
            Some(d) => (&inner[..d], Some(&inner[d + 2..])),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid variable name {name:?} in `${{{inner}}}` (letters, digits, underscore)"
            ));
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} to give a default)"
                ))
            }
        }
        rest = &inner_start[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// Maps YAML paths (`sweeps.comments.pending.after`, `x.evidence[0].source`)
/// to 1-based (line, column) of the key or item that starts them.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    positions: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// The path of the value about to start, consuming the parent's slot.
    fn value_path(&mut self, mark: Marker) -> String {
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => join(path, &k),
                None => path.clone(),
            },
            Some(Frame::Seq { path, index }) => {
                let p = join(path, &format!("[{index}]"));
                *index += 1;
                p
            }
        };
        self.positions
            .entry(path.clone())
            .or_insert((mark.line(), mark.col()));
        path
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join(path, &value);
                        self.positions.insert(p, (mark.line(), mark.col()));
                        *key = Some(value);
                        return;
                    }
                }
                self.value_path(mark);
            }
            Event::Alias(_) => {
                self.value_path(mark);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by `parse`; positions up to it remain.
        let _ = parser.load(&mut b, false);
        Locator {
            positions: b.positions,
        }
    }

    /// The position of `path`, or of its nearest ancestor that exists.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = match (p.rfind('.'), p.rfind('[')) {
                (Some(d), Some(b)) => &p[..d.max(b)],
                (Some(d), None) => &p[..d],
                (None, Some(b)) => &p[..b],
                (None, None) => "",
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_keys_get_the_nearest_known_one() {
        let table = [
            (
                "unknown field `tabel`, expected one of `database`, `table`, `key`",
                Some("`table`"),
            ),
            (
                "unknown field `queuess`, expected one of `databases`, `queues`, `sweeps`",
                Some("`queues`"),
            ),
            ("unknown field `zzzzzz`, expected `table` or `key`", None),
            ("invalid type: string \"x\", expected u32", None),
        ];
        for (msg, want) in table {
            let got = suggest(msg);
            match want {
                Some(k) => assert!(got.contains(&format!("did you mean {k}?")), "{got}"),
                None => assert_eq!(got, msg),
            }
        }
    }

    #[test]
    fn removes_keys_at_nested_paths() {
        let mut n: Node =
            serde_yaml::from_str("a:\n  list:\n    - {x: 1, y: 2}\n  b: 3\n").unwrap();
        assert!(remove_at(&mut n, "a.list[0].y"));
        assert!(remove_at(&mut n, "a.b"));
        assert!(!remove_at(&mut n, "a.nope"));
        assert_eq!(
            serde_yaml::to_string(&n).unwrap(),
            "a:\n  list:\n  - x: 1\n"
        );
    }

    #[test]
    fn locates_nested_paths() {
        let text = "a:\n  b: 1\n  list:\n    - x: 1\n      y: 2\n    - {x: 3, y: 4}\nc: [1, 2]\n";
        let loc = Locator::new(text);
        let table = [
            ("a", (1, 0)),
            ("a.b", (2, 2)),
            ("a.list[0].y", (5, 6)),
            ("a.list[1]", (6, 6)),
            ("a.list[1].y", (6, 13)),
            ("c", (7, 0)),
            ("c[1]", (7, 7)),
            ("a.nope.deeper", (1, 0)),
            ("zzz", (1, 1)), // unknown at the top: the document itself
        ];
        for (path, (line, col)) in table {
            let got = loc.locate(path);
            // Lines are 1-based; columns are yaml-rust2's 0-based offsets.
            assert_eq!(got, Some((line, col)), "{path}");
        }
    }

    #[test]
    fn expands_variables() {
        let env = |k: &str| match k {
            "HOST" => Some("db.local".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let table: &[(&str, Result<Option<&str>, &str>)] = &[
            ("plain", Ok(None)),
            ("postgres://${HOST}/x", Ok(Some("postgres://db.local/x"))),
            ("${MISSING:-fallback}", Ok(Some("fallback"))),
            ("${HOST:-fallback}", Ok(Some("db.local"))),
            ("${EMPTY:-d}", Ok(Some(""))),
            ("cost $5", Ok(Some("cost $5"))),
            ("$${HOST}", Ok(Some("${HOST}"))),
            ("${MISSING}", Err("environment variable MISSING is not set")),
            ("${HOST", Err("unterminated")),
            ("${1BAD}", Err("invalid variable name")),
        ];
        for (input, want) in table {
            let got = expand(input, &env);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g.as_deref(), *w, "{input}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{input}: {g}"),
                (g, w) => panic!("{input}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn decode_reports_paths_of_unknown_fields() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            after: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            pending: Inner,
        }
        let node = parse("pending:\n  aftr: 10m\n").unwrap();
        let (path, msg) = decode::<Outer>(node).unwrap_err();
        assert_eq!(path, "pending.aftr");
        assert!(msg.contains("unknown field `aftr`"), "{msg}");
    }
}
