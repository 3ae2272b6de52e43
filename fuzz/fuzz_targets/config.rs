//! Config loading: any text is either a config or a list of problems with
//! paths — never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(errs) = sweeper::config::load_str(&text, "fuzz.yaml", &|_| None) {
        assert!(
            !errs.errors.is_empty(),
            "an error names at least one problem"
        );
        let _ = errs.to_string();
    }
});
