//! Job templates: JSON bodies, routing keys, URLs and headers with
//! `{{placeholder}}`s filled from a job.
//!
//! A string that is exactly one placeholder takes the value's JSON type
//! (`"{{args}}"` → an array, `"{{attempt}}"` → a number); a placeholder
//! inside longer text is replaced by the value as text. Placeholders:
//! `class`, `queue`, `args`, `args.N` (the N-th argument), `sweep`, `key`,
//! `attempt`, `idempotency_key`.

use serde_json::{Map, Value};

/// The values a template can use.
#[derive(Clone, Debug)]
pub struct JobFields<'a> {
    pub class: &'a str,
    pub queue: &'a str,
    pub args: &'a [Value],
    pub sweep: &'a str,
    pub key: &'a str,
    pub attempt: u32,
    pub idempotency_key: &'a str,
}

pub const PLACEHOLDERS: &[&str] = &[
    "class",
    "queue",
    "args",
    "args.N",
    "sweep",
    "key",
    "attempt",
    "idempotency_key",
];

/// Whether `name` is a known placeholder.
pub fn known(name: &str) -> bool {
    match name.strip_prefix("args.") {
        Some(n) => n.parse::<usize>().is_ok(),
        None => PLACEHOLDERS.contains(&name) && name != "args.N",
    }
}

/// Every `{{name}}` in `s`.
pub fn names_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                out.push(after[..j].trim().to_string());
                rest = &after[j + 2..];
            }
            None => break,
        }
    }
    out
}

/// Every placeholder name used anywhere in a JSON template.
pub fn names_in_value(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => names_in(s),
        Value::Array(a) => a.iter().flat_map(names_in_value).collect(),
        Value::Object(o) => o.values().flat_map(names_in_value).collect(),
        _ => Vec::new(),
    }
}

fn lookup(name: &str, f: &JobFields<'_>) -> Value {
    match name {
        "class" => Value::from(f.class),
        "queue" => Value::from(f.queue),
        "args" => Value::from(f.args.to_vec()),
        "sweep" => Value::from(f.sweep),
        "key" => Value::from(f.key),
        "attempt" => Value::from(f.attempt),
        "idempotency_key" => Value::from(f.idempotency_key),
        other => match other
            .strip_prefix("args.")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => f.args.get(n).cloned().unwrap_or(Value::Null),
            None => Value::Null,
        },
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Fill placeholders in text.
pub fn render_str(s: &str, f: &JobFields<'_>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                out.push_str(&as_text(&lookup(after[..j].trim(), f)));
                rest = &after[j + 2..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Fill placeholders in a JSON template.
pub fn render(t: &Value, f: &JobFields<'_>) -> Value {
    match t {
        Value::String(s) => {
            let trimmed = s.trim();
            let whole = trimmed.starts_with("{{")
                && trimmed.ends_with("}}")
                && trimmed.matches("{{").count() == 1;
            if whole {
                lookup(trimmed[2..trimmed.len() - 2].trim(), f)
            } else {
                Value::from(render_str(s, f))
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| render(v, f)).collect()),
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                m.insert(k.clone(), render(v, f));
            }
            Value::Object(m)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(args: &[Value]) -> JobFields<'_> {
        JobFields {
            class: "NotifyUser",
            queue: "notify",
            args,
            sweep: "comments",
            key: "42",
            attempt: 2,
            idempotency_key: "comments:42:2",
        }
    }

    #[test]
    fn renders_typed_values_and_text() {
        let args = [json!(7), json!(null), json!("x")];
        let t = json!({
            "job": "{{class}}",
            "args": "{{args}}",
            "first": "{{ args.0 }}",
            "missing": "{{args.9}}",
            "attempt": "{{attempt}}",
            "path": "/sweeps/{{sweep}}/rows/{{key}}?a={{attempt}}",
            "nested": [{"q": "{{queue}}"}, 5, true],
            "literal": "no placeholders"
        });
        let got = render(&t, &fields(&args));
        assert_eq!(
            got,
            json!({
                "job": "NotifyUser",
                "args": [7, null, "x"],
                "first": 7,
                "missing": null,
                "attempt": 2,
                "path": "/sweeps/comments/rows/42?a=2",
                "nested": [{"q": "notify"}, 5, true],
                "literal": "no placeholders"
            })
        );
        assert_eq!(
            render_str("{{idempotency_key}}", &fields(&args)),
            "comments:42:2"
        );
        assert_eq!(render_str("open {{ end", &fields(&args)), "open {{ end");
    }

    #[test]
    fn knows_its_placeholders() {
        for (name, ok) in [
            ("class", true),
            ("args.3", true),
            ("args.x", false),
            ("args.N", false),
            ("user", false),
        ] {
            assert_eq!(known(name), ok, "{name}");
        }
        assert_eq!(
            names_in_value(&json!({"a": ["{{x}} {{key}}"]})),
            ["x", "key"]
        );
    }
}
