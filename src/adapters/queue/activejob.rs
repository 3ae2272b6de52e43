//! Rails ActiveJob envelopes, as Rails' own Sidekiq and Resque adapters
//! write them (activejob 6.1–8.1 `core.rb#serialize`, `arguments.rb`,
//! `queue_adapters/{sidekiq,resque}_adapter.rb`): the serialized job hash —
//! `job_class, job_id, provider_job_id, queue_name, priority, arguments,
//! executions, exception_executions, locale, timezone, enqueued_at,
//! scheduled_at` — is the one argument of the adapter's wrapper class.
//!
//! Owns: turning a row's column values into ActiveJob arguments (plain
//! JSON values, GlobalID record references, keyword arguments marked
//! `_aj_ruby2_keywords`, hashes with `_aj_symbol_keys`) and refusing values
//! ActiveJob could not carry; the job hash. Does not own: the queue's own
//! envelope (`sidekiq`, `resque`).

use crate::config::{ActiveJobFormat, AjArg, AjArgKind};
use crate::core::model::Timestamp;
use serde_json::{Map, Value};

/// A random UUID v4, like `SecureRandom.uuid`.
pub fn new_job_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    let hi = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// One argument from its column's value.
fn argument(fmt: &ActiveJobFormat, a: &AjArg, values: &[Value]) -> Result<Value, String> {
    let v = values.get(a.column).cloned().unwrap_or(Value::Null);
    match &a.kind {
        AjArgKind::Value => {
            check(&v)?;
            Ok(v)
        }
        AjArgKind::GlobalId(model) => {
            let id = match &v {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Null => return Err(format!("a {model} reference is NULL")),
                other => return Err(format!("a {model} reference cannot be {other}")),
            };
            let app = fmt.app.as_deref().unwrap_or_default();
            let mut m = Map::new();
            m.insert(
                "_aj_globalid".into(),
                Value::from(format!("gid://{app}/{model}/{id}")),
            );
            Ok(Value::Object(m))
        }
        AjArgKind::SymbolKeys => match v {
            Value::Object(mut o) => {
                check(&Value::Object(o.clone()))?;
                let keys: Vec<Value> = o.keys().cloned().map(Value::from).collect();
                o.insert("_aj_symbol_keys".into(), Value::Array(keys));
                Ok(Value::Object(o))
            }
            other => Err(format!("a hash with symbol keys cannot be {other}")),
        },
    }
}

/// Whether ActiveJob can carry a plain JSON value unchanged: any JSON
/// scalar or array, and objects whose keys are not ActiveJob's own
/// markers (a key like `_aj_globalid` would be read as one).
fn check(v: &Value) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(check),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| k.starts_with("_aj_")) {
                return Err(format!(
                    "a hash key {k:?} is reserved by ActiveJob and would change the job"
                ));
            }
            if o.keys().any(|k| k == "_aj_serialized") {
                return Err("a hash with `_aj_serialized` cannot be passed".into());
            }
            o.values().try_for_each(check)
        }
        _ => Ok(()),
    }
}

/// The job's `arguments`, as `ActiveJob::Arguments.serialize` writes them:
/// positional values, then the keyword arguments as one hash marked
/// `_aj_ruby2_keywords`. `Err` names what ActiveJob could not carry.
pub fn arguments(fmt: &ActiveJobFormat, values: &[Value]) -> Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(fmt.args.len() + 1);
    for a in &fmt.args {
        out.push(argument(fmt, a, values)?);
    }
    if !fmt.kwargs.is_empty() {
        let mut h = Map::new();
        for (k, a) in &fmt.kwargs {
            h.insert(k.clone(), argument(fmt, a, values)?);
        }
        let keys = fmt.kwargs.iter().map(|(k, _)| Value::from(k.as_str()));
        h.insert("_aj_ruby2_keywords".into(), Value::Array(keys.collect()));
        out.push(Value::Object(h));
    }
    Ok(out)
}

/// `enqueued_at` as Rails 7.1+ writes it (`iso8601(9)`); Rails 6.1 keeps
/// it as a string and 7.1+ parses it with `Time.iso8601`.
pub fn iso8601(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

/// The serialized job (`ActiveJob::Core#serialize`), fields in Rails'
/// order.
pub fn job_hash(
    fmt: &ActiveJobFormat,
    class: &str,
    queue: &str,
    arguments: Vec<Value>,
    job_id: &str,
    now: Timestamp,
) -> Value {
    let mut m = Map::new();
    m.insert("job_class".into(), Value::from(class));
    m.insert("job_id".into(), Value::from(job_id));
    m.insert("provider_job_id".into(), Value::Null);
    m.insert("queue_name".into(), Value::from(queue));
    m.insert(
        "priority".into(),
        fmt.priority.map_or(Value::Null, Value::from),
    );
    m.insert("arguments".into(), Value::Array(arguments));
    m.insert("executions".into(), Value::from(0));
    m.insert("exception_executions".into(), Value::Object(Map::new()));
    m.insert("locale".into(), Value::from(fmt.locale.as_str()));
    m.insert(
        "timezone".into(),
        fmt.timezone.as_deref().map_or(Value::Null, Value::from),
    );
    m.insert("enqueued_at".into(), Value::from(iso8601(now)));
    m.insert("scheduled_at".into(), Value::Null);
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fmt(args: Vec<AjArg>, kwargs: Vec<(String, AjArg)>) -> ActiveJobFormat {
        ActiveJobFormat {
            wrapper: crate::config::AJ_SIDEKIQ_WRAPPER.into(),
            locale: "en".into(),
            timezone: Some("UTC".into()),
            priority: None,
            app: Some("shop".into()),
            args,
            kwargs,
        }
    }

    fn a(column: usize, kind: AjArgKind) -> AjArg {
        AjArg { column, kind }
    }

    #[test]
    fn arguments_are_serialized_as_activejob_writes_them() {
        let f = fmt(
            vec![
                a(0, AjArgKind::GlobalId("User".into())),
                a(1, AjArgKind::Value),
                a(3, AjArgKind::SymbolKeys),
            ],
            vec![("note".into(), a(2, AjArgKind::Value))],
        );
        let got = arguments(&f, &[json!(7), json!(42), json!("hi"), json!({"a": 1})]).unwrap();
        assert_eq!(
            Value::Array(got),
            json!([
                {"_aj_globalid": "gid://shop/User/7"},
                42,
                {"a": 1, "_aj_symbol_keys": ["a"]},
                {"note": "hi", "_aj_ruby2_keywords": ["note"]}
            ])
        );
    }

    #[test]
    fn values_activejob_cannot_carry_are_refused() {
        let f = fmt(vec![a(0, AjArgKind::Value)], vec![]);
        let table = [
            (
                json!({"_aj_globalid": "gid://x/Y/1"}),
                "reserved by ActiveJob",
            ),
            (json!([{"_aj_symbol_keys": []}]), "reserved by ActiveJob"),
        ];
        for (v, says) in table {
            let err = arguments(&f, std::slice::from_ref(&v)).unwrap_err();
            assert!(err.contains(says), "{v}: {err}");
        }
        let gid = fmt(vec![a(0, AjArgKind::GlobalId("User".into()))], vec![]);
        assert!(arguments(&gid, &[Value::Null])
            .unwrap_err()
            .contains("NULL"));
        let sym = fmt(vec![a(0, AjArgKind::SymbolKeys)], vec![]);
        assert!(arguments(&sym, &[json!(3)]).is_err());
        for ok in [
            json!(null),
            json!(1.5),
            json!("x"),
            json!([1, "a"]),
            json!({"k": [1]}),
        ] {
            assert!(arguments(&f, std::slice::from_ref(&ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_job_hash_has_rails_fields_in_rails_order() {
        let now = chrono::DateTime::from_timestamp(1_726_763_966, 609_737_000).unwrap();
        let h = job_hash(
            &fmt(vec![], vec![]),
            "ApiAjJob",
            "default",
            vec![json!(1), json!(2), json!(3)],
            "37649eb0-0000-4000-8000-000000000000",
            now,
        );
        // Sidekiq's own fixture of an ActiveJob payload (test/api_test.rb),
        // with our job id, timezone and time.
        assert_eq!(
            h.to_string(),
            r#"{"job_class":"ApiAjJob","job_id":"37649eb0-0000-4000-8000-000000000000","provider_job_id":null,"queue_name":"default","priority":null,"arguments":[1,2,3],"executions":0,"exception_executions":{},"locale":"en","timezone":"UTC","enqueued_at":"2024-09-19T16:39:26.609737000Z","scheduled_at":null}"#
        );
        let id = new_job_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!("89ab".contains(&id[19..20]), "variant: {id}");
    }
}
