//! Provider payload parsers (Mailgun events, SendGrid messages, Postmark
//! details, search and bounces, the generic status API) on arbitrary JSON,
//! then recorded as evidence: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sweeper::core::evidence::custom::StatusMap;
use sweeper::core::evidence::provider::{self, ProviderEvent};
use sweeper::core::evidence::TraceStore;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut events: Vec<ProviderEvent> = Vec::new();
    if let Ok((ev, _next)) = provider::mailgun_page(&v) {
        events.extend(ev);
    }
    if let Ok(ev) = provider::sendgrid_messages(&v, &["abc".to_string(), "k".to_string()]) {
        events.extend(ev);
    }
    let (ev, _bounces) = provider::postmark_details(&v, "k");
    events.extend(ev);
    let _ = provider::postmark_search_ids(&v);
    let _ = provider::postmark_bounce(&v);
    let map = StatusMap {
        sent: vec!["delivered".into()],
        failed: vec!["bounced".into()],
    };
    for (events_ptr, recipient) in [(None, None), (Some("/events"), Some("/to"))] {
        if let Ok(ev) = provider::generic(&v, "k", events_ptr, "/status", recipient, &map) {
            events.extend(ev);
        }
    }
    let mut store = TraceStore::new(false);
    let mut refs = Vec::new();
    provider::record(&mut store, &mut events, &mut refs);
    let _ = store.verdict("k", None);
    let _ = store.verdict("abc", None);
});
