//! Custom metric templates: `parse_metrics` on a ConfigMap's data, then rendering each
//! template with arbitrary label values.
//!
//! Input: NUL-separated parts, `yaml \0 key \0 namespace \0 service \0 version \0
//! stable_version \0 window-seconds`; missing parts take plain defaults.
//!
//! Rendering must keep every value inside its string literal: read as Prometheus' lexer
//! reads it, the query outside string literals is the same whatever the values.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use weir_analysis::custom::TemplateValues;
use weir_analysis::parse_metrics;
use weir_analysis::promql::Window;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let yaml = parts.next().unwrap_or_default();
    let mut part = |default| parts.next().unwrap_or(default);
    let key = part("latency-p50");
    let values = [part("store"), part("shop"), part("v2"), part("v1")];
    let seconds = part("300").parse().unwrap_or(300);

    let config = BTreeMap::from([(key.to_owned(), yaml.to_owned())]);
    let templates = match parse_metrics("shop-metrics", &config) {
        Ok(templates) => templates,
        Err(error) => {
            assert_eq!(error.problems.len(), 1, "{error}");
            assert_eq!(error.problems[0].key, key);
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    assert_eq!(templates.len(), 1);
    let template = &templates[0];
    assert_eq!(template.name, key);
    let _ = template.bound.to_string();
    let _ = template.bound.resolve(Some(0.5));
    if template.bound.is_relative() {
        assert_eq!(template.bound.resolve(None), None);
    }

    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let window = Window::since(now, now, Duration::from_secs(seconds));
    let render = |[namespace, service, version, stable_version]: [&str; 4]| {
        template.render(&TemplateValues {
            namespace,
            service,
            version,
            stable_version,
            window,
        })
    };
    let plain = render(["store", "shop", "v2", "v1"]);
    let fuzzed = render(values);
    // A raw line break inside a string is the template's own error, which Prometheus
    // reports when it is queried; it is not one a value can cause.
    let Some(expected) = outside_literals(&plain) else {
        return;
    };
    let found = outside_literals(&fuzzed);
    assert_eq!(
        found.as_ref(),
        Some(&expected),
        "a value escaped its string literal:\n{plain}\n{fuzzed}"
    );
});

/// The query with each string literal replaced by `""`, as Prometheus' lexer reads
/// it: `"…"` and `'…'` with backslash escapes, `` `…` `` raw, `#` a comment to the end
/// of the line. `None` when a literal is left open.
fn outside_literals(query: &str) -> Option<String> {
    let mut code = String::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                loop {
                    match chars.next()? {
                        '\\' if c != '`' => {
                            chars.next()?;
                        }
                        '\n' if c != '`' => return None,
                        end if end == c => break,
                        _ => {}
                    }
                }
                code.push_str("\"\"");
            }
            '#' => {
                code.push('#');
                for c in chars.by_ref() {
                    code.push(c);
                    if c == '\n' {
                        break;
                    }
                }
            }
            c => code.push(c),
        }
    }
    Some(code)
}
