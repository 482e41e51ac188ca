use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;

fn data(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn window(seconds: i64) -> Window {
    let end = Timestamp::from_second(1_700_000_000).unwrap();
    Window::since(
        end - jiff::SignedDuration::from_secs(seconds),
        end,
        Duration::ZERO,
    )
}

fn values<'a>(version: &'a str) -> TemplateValues<'a> {
    TemplateValues {
        namespace: "shop",
        service: "checkout",
        version,
        stable_version: "v1",
        window: window(300),
    }
}

const ERRORS: &str = r#"sum(rate(http_errors_total{namespace="{namespace}",app="{service}",version="{version}"}[{window}]))"#;

fn one(yaml: &str) -> Result<MetricTemplate, String> {
    parse_metrics("extra", &data(&[("m", yaml)]))
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or_else(|| "no template".to_string())
}

#[test]
fn templates_are_read_with_their_bounds() {
    let relative = |factor, offset| Limit::RelativeToStable { factor, offset };
    let cases = [
        ("max: 0.05", TemplateBound::Max(Limit::Absolute(0.05))),
        ("min: 10", TemplateBound::Min(Limit::Absolute(10.0))),
        ("max: 1e-3", TemplateBound::Max(Limit::Absolute(0.001))),
        ("max: '0.5'", TemplateBound::Max(Limit::Absolute(0.5))),
        ("max: -2", TemplateBound::Max(Limit::Absolute(-2.0))),
        ("max: stable", TemplateBound::Max(relative(1.0, 0.0))),
        ("max: stable * 1.2", TemplateBound::Max(relative(1.2, 0.0))),
        ("max: stable*1.2", TemplateBound::Max(relative(1.2, 0.0))),
        ("min: stable * 0.8", TemplateBound::Min(relative(0.8, 0.0))),
        (
            "max: stable + 0.01",
            TemplateBound::Max(relative(1.0, 0.01)),
        ),
        (
            "max: stable * 1.5 + 0.001",
            TemplateBound::Max(relative(1.5, 0.001)),
        ),
        (
            "min: stable * 2e-1 - 5",
            TemplateBound::Min(relative(0.2, -5.0)),
        ),
        (
            "max: '  stable *1.1+2 '",
            TemplateBound::Max(relative(1.1, 2.0)),
        ),
    ];
    for (bound, expected) in cases {
        let yaml = format!("query: '{}'\n{bound}\n", ERRORS.replace('\'', "''"));
        let template = one(&yaml).unwrap_or_else(|e| panic!("{bound}: {e}"));
        assert_eq!(template.bound, expected, "{bound}");
        assert_eq!(template.name, "m");
        assert_eq!(template.query, ERRORS);
    }
}

#[test]
fn a_block_scalar_query_keeps_its_lines() {
    let yaml = "query: |\n  sum(rate(a{version=\"{version}\"}[{window}]))\n  # per second\n  / 2\nmax: stable * 1.2\n";
    let template = one(yaml).unwrap();
    assert_eq!(
        template.render(&values("v2")),
        "sum(rate(a{version=\"v2\"}[300s]))\n# per second\n/ 2\n"
    );
}

#[test]
fn every_placeholder_is_replaced_and_values_escaped() {
    let template = MetricTemplate::new(
        "m",
        r#"rate(a{ns="{namespace}",svc="{service}",v="{version}",s="{stable_version}"}[{window}]) / b{w="{window}"}"#,
        TemplateBound::Max(Limit::Absolute(1.0)),
    )
    .unwrap();
    assert_eq!(
        template.render(&values("v2")),
        r#"rate(a{ns="shop",svc="checkout",v="v2",s="v1"}[300s]) / b{w="300s"}"#
    );
    let hostile = r#"v2"} or vector(1) or a{b="\"#;
    let rendered = template.render(&TemplateValues {
        namespace: "ns\n",
        version: hostile,
        ..values("")
    });
    assert_eq!(
        rendered,
        r#"rate(a{ns="ns\n",svc="checkout",v="v2\"} or vector(1) or a{b=\"\\",s="v1"}[300s]) / b{w="300s"}"#
    );
}

proptest! {
    /// Whatever the values, the rendered query has exactly the template's literals:
    /// each substituted value stays inside the literal it was put in.
    #[test]
    fn values_never_leave_their_literal(
        namespace in any::<String>(),
        version in any::<String>(),
        stable in any::<String>(),
    ) {
        let template = MetricTemplate::new(
            "m",
            r#"sum(rate(a{ns="{namespace}",v="{version}"}[{window}])) / sum(rate(a{v="x{stable_version}y"}[{window}]))"#,
            TemplateBound::Max(Limit::Absolute(1.0)),
        ).unwrap();
        let rendered = template.render(&TemplateValues {
            namespace: &namespace,
            service: "s",
            version: &version,
            stable_version: &stable,
            window: window(60),
        });
        prop_assert_eq!(
            without_literals(&rendered),
            r#"sum(rate(a{ns="",v=""}[60s])) / sum(rate(a{v=""}[60s]))"#
        );
    }
}

/// The text with every double-quoted literal's contents removed, as PromQL's lexer
/// delimits them.
fn without_literals(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            loop {
                match chars.next() {
                    Some('\\') => {
                        chars.next();
                    }
                    Some('"') | None => {
                        out.push('"');
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
    }
    out
}

#[test]
fn bad_templates_are_refused_with_the_key_and_the_fix() {
    let q = |query: &str, bound: &str| format!("query: '{}'\n{bound}\n", query.replace('\'', "''"));
    let cases = [
        (q(ERRORS, ""), "has no bound: add `max` or `min`"),
        (
            q(ERRORS, "max: 1\nmin: 0"),
            "has both `max` and `min`: keep one",
        ),
        (
            q(ERRORS, "max: stable * 0"),
            "`max: stable * 0` is not a bound",
        ),
        (
            q(ERRORS, "max: stable * -1"),
            "`max: stable * -1` is not a bound",
        ),
        (
            q(ERRORS, "max: canary * 2"),
            "`max: canary * 2` is not a bound",
        ),
        (q(ERRORS, "max: stable * 1.2 +"), "is not a bound"),
        (q(ERRORS, "max: stable 1.2"), "is not a bound"),
        (q(ERRORS, "max: 5%"), "`max: 5%` is not a bound"),
        (q(ERRORS, "max: .inf"), "`max: inf` is not a bound"),
        (q(ERRORS, "max: .nan"), "`max: NaN` is not a bound"),
        (
            format!("{}maxx: 1\n", q(ERRORS, "max: 1")),
            "unknown field `maxx`",
        ),
        ("max: 1\n".to_string(), "missing field `query`"),
        ("just text".to_string(), "not a metric template"),
        (q("", "max: 1"), "`query` is empty"),
        (q("sum(a)", "max: 1"), "does not use {version}"),
        (
            q(r#"a{v="{verison}"}"#, "max: 1"),
            "unknown placeholder {verison}: the placeholders are {namespace}, {service}, {version}",
        ),
        (
            q("a{v={version}}", "max: 1"),
            "{version} in `query` stands where its value could not be escaped: put it inside double quotes",
        ),
        (
            q("a{v='{version}'}", "max: 1"),
            "put it inside double quotes, e.g. label=\"{version}\"",
        ),
        (
            q("a{v=`{version}`}", "max: 1"),
            "put it inside double quotes",
        ),
        (
            q(r#"a{v="{version}"}['{window}']"#, "max: 1"),
            "use it as a range, e.g. [{window}]",
        ),
        (
            q(r#"a{v="{version}\"}"#, "max: 1"),
            "a string opened with \" that is never closed",
        ),
    ];
    for (yaml, expected) in cases {
        let error = parse_metrics("extra", &data(&[("p99-latency", &yaml)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("ConfigMap extra (weir.dev/metrics) key \"p99-latency\": "),
            "{error}"
        );
        assert!(
            error.contains(expected),
            "{yaml:?}: {error:?} lacks {expected:?}"
        );
    }
}

#[test]
fn built_in_names_and_empty_config_maps_are_refused() {
    for name in [
        "request-count",
        "error-rate",
        "latency",
        "slower-than-500ms",
    ] {
        let yaml = format!("query: '{}'\nmax: 1\n", ERRORS.replace('\'', "''"));
        let error = parse_metrics("extra", &data(&[(name, &yaml)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("is the name of a built-in gate: rename the key"),
            "{error}"
        );
    }
    let error = parse_metrics("extra", &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "ConfigMap extra (weir.dev/metrics) has no data: add one key per metric (see docs/metrics.md)"
    );
}

#[test]
fn every_bad_key_is_named_and_good_keys_come_in_key_order() {
    let good = format!("query: '{}'\nmax: 1\n", ERRORS.replace('\'', "''"));
    let error = parse_metrics(
        "extra",
        &data(&[("b", "max: 1"), ("a", &good), ("c", "query: x\nmax: 1")]),
    )
    .unwrap_err();
    let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);

    let templates = parse_metrics("extra", &data(&[("zeta", &good), ("alpha", &good)])).unwrap();
    let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
}

#[test]
fn placeholders_in_comments_and_regex_quantifiers_are_left_alone() {
    let template = MetricTemplate::new(
        "m",
        "a{v=\"{version}\",code=~\"5[0-9]{2}\"} # {anything} goes here\n/ b{v=\"{version}\"}",
        TemplateBound::Max(Limit::Absolute(1.0)),
    )
    .unwrap();
    assert_eq!(
        template.render(&values("v2")),
        "a{v=\"v2\",code=~\"5[0-9]{2}\"} # {anything} goes here\n/ b{v=\"v2\"}"
    );
}

#[test]
fn bounds_resolve_against_stable() {
    let relative = TemplateBound::Max(Limit::RelativeToStable {
        factor: 1.2,
        offset: 0.01,
    });
    assert_eq!(
        relative.resolve(Some(0.5)),
        Some(Bound::Max(0.5 * 1.2 + 0.01))
    );
    assert_eq!(relative.resolve(None), None);
    assert_eq!(relative.resolve(Some(f64::NAN)), None);
    assert!(relative.is_relative());
    let absolute = TemplateBound::Min(Limit::Absolute(3.0));
    assert_eq!(absolute.resolve(None), Some(Bound::Min(3.0)));
    assert!(!absolute.is_relative());
    assert_eq!(relative.to_string(), "max: stable * 1.2 + 0.01");
    assert_eq!(
        TemplateBound::Min(Limit::RelativeToStable {
            factor: 1.0,
            offset: -2.0
        })
        .to_string(),
        "min: stable - 2"
    );
}

#[test]
fn the_example_in_the_docs_parses() {
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        data: BTreeMap<String, String>,
    }
    let docs = include_str!("../../../docs/metrics.md");
    let start = docs.find("```yaml\napiVersion: v1").expect("the example") + "```yaml\n".len();
    let end = start + docs[start..].find("```").unwrap();
    let config_map: ConfigMap = serde_yaml::from_str(&docs[start..end]).unwrap();
    let templates = parse_metrics("checkout-metrics", &config_map.data).unwrap();
    let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["error-ratio", "queue-depth"]);
    assert_eq!(
        templates[0].bound,
        TemplateBound::Max(Limit::RelativeToStable {
            factor: 1.2,
            offset: 0.001
        })
    );
    assert!(
        templates[0]
            .render(&values("v2"))
            .contains(r#"version="v2"}[300s]"#)
    );
}

#[test]
fn a_query_prometheus_would_refuse_is_refused_when_the_config_map_is_read() {
    let q = |query: &str| format!("query: '{}'\nmax: 0.1\n", query.replace('\'', "''"));
    let cases = [
        // The syntax error behind issue 11's "broken-ratio": a parenthesis left open.
        (
            r#"sum(rate(errors{version="{version}"}[{window}]) / sum(rate(requests{version="{version}"}[{window}]))"#,
            "`query` is not valid PromQL: ",
        ),
        (
            r#"sum(rat(errors{version="{version}"}[{window}]))"#,
            "`query` is not valid PromQL: unknown function with name 'rat'",
        ),
        (
            r#"sum by (code errors{version="{version}"})"#,
            "`query` is not valid PromQL: ",
        ),
        // Valid PromQL, but not one value per version.
        (
            r#"errors{version="{version}"}[{window}]"#,
            "`query` returns a range vector where weir needs an instant vector",
        ),
        (
            r#"scalar(sum(errors{version="{version}"}))"#,
            "`query` returns a scalar where weir needs an instant vector",
        ),
    ];
    for (query, expected) in cases {
        let error =
            parse_metrics("checkout-metrics", &data(&[("broken-ratio", &q(query))])).unwrap_err();
        let shown = error.to_string();
        assert!(
            shown.contains(expected),
            "{query}: {shown:?} lacks {expected:?}"
        );
        assert_eq!(
            shown.matches("broken-ratio").count(),
            1,
            "names the metric once: {shown}"
        );
        assert!(!shown.contains("credentials"), "{shown}");
    }
    // The parser's own words are quoted.
    let error = parse_metrics(
        "checkout-metrics",
        &data(&[("broken-ratio", &q(cases[0].0))]),
    )
    .unwrap_err();
    let parser = promql_parser::parser::parse(
        r#"sum(rate(errors{version="version"}[60s]) / sum(rate(requests{version="version"}[60s]))"#,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains(parser.trim()),
        "{error} lacks {parser:?}"
    );
}

#[test]
fn queries_in_every_valid_shape_pass_the_parser() {
    for query in [
        ERRORS,
        r#"sum(rate(a{version="{version}"}[{window}])) / sum(rate(b{version="{version}"}[{window}]))"#,
        r#"histogram_quantile(0.99, sum by (le) (rate(h_bucket{version="{version}"}[{window}])))"#,
        r#"max_over_time(q{version="{version}", stable="{stable_version}"}[{window}:15s])"#,
        "sum(a{version=\"{version}\"}) # per second\n/ 2",
        r#"sum(increase(a{version="{version}"}[{window}])) or vector(0)"#,
    ] {
        MetricTemplate::new("m", query, TemplateBound::Max(Limit::Absolute(1.0)))
            .unwrap_or_else(|e| panic!("{query}: {e}"));
    }
}
