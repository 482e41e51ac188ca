//! Custom metrics: PromQL templates from the ConfigMap named by `weir.dev/metrics`.
//! Pure: parses and renders strings, talks to nobody.
//!
//! Each key of the ConfigMap's `data` is one metric, named by the key; its value is YAML:
//!
//! ```yaml
//! query: |
//!   sum(rate(http_errors_total{namespace="{namespace}",app="{service}",version="{version}"}[{window}]))
//!   / sum(rate(http_requests_total{namespace="{namespace}",app="{service}",version="{version}"}[{window}]))
//! max: stable * 1.2 + 0.001
//! ```
//!
//! - `query`: PromQL returning one series (an instant vector), checked with a PromQL
//!   parser when the ConfigMap is read. `{namespace}`, `{service}`, `{version}` and
//!   `{stable_version}` are replaced by values escaped with [`crate::promql::escape`], so
//!   they must stand inside double-quoted strings; `{version}` is required, and is the
//!   canary's version in the canary's query and the stable version's in the stable's.
//!   `{window}` is replaced by the check's window as a PromQL duration (`300s`).
//! - exactly one of `max` (the canary's value must be at most) and `min` (at least):
//!   a number (`max: 0.05`), or relative to the stable version's value in the same check,
//!   `stable`, `stable * F`, `stable + A`, `stable * F + A` or `stable * F - A`.

use std::collections::BTreeMap;
use std::fmt;

use promql_parser::parser::value::ValueType;
use serde::Deserialize;

use crate::judge::{ERROR_RATE, LATENCY, REQUEST_COUNT, SLOW_SHARE_PREFIX};
use crate::promql::{Window, escape};
use crate::verdict::Bound;

/// One custom metric: a PromQL template and the bound the canary's value is held to.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricTemplate {
    /// The metric's name: its key in the ConfigMap.
    pub name: String,
    /// The PromQL template, as written.
    pub query: String,
    /// The limit on the canary's value.
    pub bound: TemplateBound,
    segments: Vec<Segment>,
}

/// The limit a custom metric holds the canary to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TemplateBound {
    /// The canary's value must be at most this.
    Max(Limit),
    /// The canary's value must be at least this.
    Min(Limit),
}

/// A bound's value: fixed, or computed from the stable version's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// This number.
    Absolute(f64),
    /// `stable × factor + offset`.
    RelativeToStable { factor: f64, offset: f64 },
}

impl TemplateBound {
    /// Whether the bound needs the stable version's value.
    pub fn is_relative(&self) -> bool {
        matches!(
            self,
            TemplateBound::Max(Limit::RelativeToStable { .. })
                | TemplateBound::Min(Limit::RelativeToStable { .. })
        )
    }

    /// The absolute bound, given the stable version's value; `None` when the bound is
    /// relative and `stable` is missing or not a finite number.
    pub fn resolve(&self, stable: Option<f64>) -> Option<Bound> {
        let value = |limit: &Limit| match *limit {
            Limit::Absolute(v) => Some(v),
            Limit::RelativeToStable { factor, offset } => stable
                .filter(|s| s.is_finite())
                .map(|s| s * factor + offset),
        };
        match self {
            TemplateBound::Max(limit) => value(limit).map(Bound::Max),
            TemplateBound::Min(limit) => value(limit).map(Bound::Min),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Limit::Absolute(v) => write!(f, "{v}"),
            Limit::RelativeToStable { factor, offset } => {
                f.write_str("stable")?;
                if factor != 1.0 {
                    write!(f, " * {factor}")?;
                }
                if offset > 0.0 {
                    write!(f, " + {offset}")?;
                } else if offset < 0.0 {
                    write!(f, " - {}", -offset)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for TemplateBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateBound::Max(limit) => write!(f, "max: {limit}"),
            TemplateBound::Min(limit) => write!(f, "min: {limit}"),
        }
    }
}

/// The values substituted into a template for one query.
#[derive(Clone, Copy, Debug)]
pub struct TemplateValues<'a> {
    /// The Service's namespace.
    pub namespace: &'a str,
    /// The Service's name.
    pub service: &'a str,
    /// The version this query measures: the canary's or the stable's.
    pub version: &'a str,
    /// The stable version.
    pub stable_version: &'a str,
    /// The check's window.
    pub window: Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placeholder {
    Namespace,
    Service,
    Version,
    StableVersion,
    Window,
}

const PLACEHOLDERS: [(&str, Placeholder); 5] = [
    ("namespace", Placeholder::Namespace),
    ("service", Placeholder::Service),
    ("version", Placeholder::Version),
    ("stable_version", Placeholder::StableVersion),
    ("window", Placeholder::Window),
];

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Text(String),
    Value(Placeholder),
}

impl MetricTemplate {
    /// Checks `query` and `bound` and prepares the template for rendering. The error
    /// says what is wrong and how to fix it.
    pub fn new(name: &str, query: &str, bound: TemplateBound) -> Result<MetricTemplate, String> {
        if name.is_empty() {
            return Err("the metric name (the ConfigMap key) is empty".to_string());
        }
        if [REQUEST_COUNT, ERROR_RATE, LATENCY].contains(&name)
            || name.starts_with(SLOW_SHARE_PREFIX)
        {
            return Err(format!(
                "{name:?} is the name of a built-in gate: rename the key"
            ));
        }
        if query.trim().is_empty() {
            return Err("`query` is empty: write the PromQL to evaluate".to_string());
        }
        let (Limit::Absolute(v) | Limit::RelativeToStable { factor: v, .. }) = match bound {
            TemplateBound::Max(limit) | TemplateBound::Min(limit) => limit,
        };
        if !v.is_finite() {
            return Err(format!("the bound {bound} is not a finite number"));
        }
        let segments = segments(query)?;
        if !segments.contains(&Segment::Value(Placeholder::Version)) {
            return Err(
                "`query` does not use {version}: without it the canary's and the stable's \
                 queries are the same; select the version with e.g. version=\"{version}\""
                    .to_string(),
            );
        }
        let template = MetricTemplate {
            name: name.to_string(),
            query: query.to_string(),
            bound,
            segments,
        };
        template.check_promql()?;
        Ok(template)
    }

    /// Refuses a query Prometheus would refuse, before any traffic moves: the template
    /// is rendered with stand-in values (every value stands inside a string literal, and
    /// the window is a valid range, so no value can make or break the syntax) and
    /// parsed. It must also return an instant vector: weir reads one value per version.
    fn check_promql(&self) -> Result<(), String> {
        let rendered = self.render(&TemplateValues {
            namespace: "namespace",
            service: "service",
            version: "version",
            stable_version: "stable-version",
            window: Window::since(
                jiff::Timestamp::UNIX_EPOCH,
                jiff::Timestamp::UNIX_EPOCH,
                std::time::Duration::from_secs(60),
            ),
        });
        let expr = promql_parser::parser::parse(&rendered).map_err(|error| {
            format!(
                "`query` is not valid PromQL: {}; fix the query",
                error.trim()
            )
        })?;
        match expr.value_type() {
            ValueType::Vector => Ok(()),
            other => Err(format!(
                "`query` returns a {} where weir needs an instant vector (one value per \
                 version): e.g. turn a range into a rate with rate(...[{{window}}]), and \
                 aggregate with sum(...)",
                describe_type(other)
            )),
        }
    }

    /// The PromQL for one version: every placeholder replaced, values escaped.
    pub fn render(&self, values: &TemplateValues<'_>) -> String {
        let mut promql = String::with_capacity(self.query.len() + 64);
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => promql.push_str(text),
                Segment::Value(placeholder) => promql.push_str(&match placeholder {
                    Placeholder::Namespace => escape(values.namespace),
                    Placeholder::Service => escape(values.service),
                    Placeholder::Version => escape(values.version),
                    Placeholder::StableVersion => escape(values.stable_version),
                    Placeholder::Window => values.window.promql_duration(),
                }),
            }
        }
        promql
    }
}

fn describe_type(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::Vector => "instant vector",
        ValueType::Matrix => "range vector",
        ValueType::Scalar => "scalar",
        ValueType::String => "string",
    }
}

/// Where the scanner is in the query.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Code,
    Comment,
    /// Inside a string literal opened by this quote.
    Literal(char),
}

/// Splits `query` into text and placeholders, refusing placeholders whose value would
/// not be escaped correctly where they stand: outside a string, or in a single-quoted
/// or raw (backtick) string, whose escaping differs from [`escape`]'s.
fn segments(query: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut context = Context::Code;
    let mut rest = query;
    while let Some(c) = rest.chars().next() {
        if c == '{'
            && context != Context::Comment
            && let Some((name, after)) = braced_identifier(rest)
        {
            let Some((_, placeholder)) = PLACEHOLDERS.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "`query` has an unknown placeholder {{{name}}}: the placeholders are \
                     {{namespace}}, {{service}}, {{version}}, {{stable_version}} and {{window}}"
                ));
            };
            let allowed = match (placeholder, context) {
                (Placeholder::Window, Context::Code | Context::Literal('"')) => true,
                (Placeholder::Window, _) => false,
                (_, context) => context == Context::Literal('"'),
            };
            if !allowed {
                let fix = if *placeholder == Placeholder::Window {
                    "use it as a range, e.g. [{window}]".to_string()
                } else {
                    format!("put it inside double quotes, e.g. label=\"{{{name}}}\"")
                };
                return Err(format!(
                    "{{{name}}} in `query` stands where its value could not be escaped: {fix}"
                ));
            }
            segments.push(Segment::Text(std::mem::take(&mut text)));
            segments.push(Segment::Value(*placeholder));
            rest = after;
            continue;
        }
        text.push(c);
        rest = &rest[c.len_utf8()..];
        context = match (context, c) {
            (Context::Code, '"' | '\'' | '`') => Context::Literal(c),
            (Context::Code, '#') => Context::Comment,
            (Context::Comment, '\n') => Context::Code,
            (Context::Literal(q), '\\') if q != '`' => {
                // The escaped character never ends the literal.
                if let Some(escaped) = rest.chars().next() {
                    text.push(escaped);
                    rest = &rest[escaped.len_utf8()..];
                }
                context
            }
            (Context::Literal(q), c) if c == q => Context::Code,
            (context, _) => context,
        };
    }
    if let Context::Literal(q) = context {
        return Err(format!(
            "`query` has a string opened with {q} that is never closed"
        ));
    }
    segments.push(Segment::Text(text));
    segments.retain(|s| *s != Segment::Text(String::new()));
    Ok(segments)
}

/// `{identifier}` at the start of `text`: the identifier and the text after the `}`.
fn braced_identifier(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    let is_identifier = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    is_identifier.then(|| (name, &inner[end + 1..]))
}

/// What is wrong with one key of the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    /// The ConfigMap key (the metric's name).
    pub key: String,
    /// What is wrong, and how to fix it.
    pub problem: String,
}

/// Why the ConfigMap named by `weir.dev/metrics` cannot be used. Names every bad key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ConfigMap {config_map} (weir.dev/metrics) {}", describe(.problems))]
pub struct MetricsConfigError {
    /// The ConfigMap's name.
    pub config_map: String,
    /// Every problem found, by key.
    pub problems: Vec<TemplateProblem>,
}

fn describe(problems: &[TemplateProblem]) -> String {
    if problems.is_empty() {
        return "has no data: add one key per metric (see docs/metrics.md)".to_string();
    }
    problems
        .iter()
        .map(|p| format!("key {:?}: {}", p.key, p.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    query: String,
    max: Option<RawLimit>,
    min: Option<RawLimit>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Number(f64),
    Text(String),
}

/// Reads the `data` of the ConfigMap `config_map` into templates, in key order.
pub fn parse_metrics(
    config_map: &str,
    data: &BTreeMap<String, String>,
) -> Result<Vec<MetricTemplate>, MetricsConfigError> {
    let mut templates = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in data {
        match parse_template(key, value) {
            Ok(template) => templates.push(template),
            Err(problem) => problems.push(TemplateProblem {
                key: key.clone(),
                problem,
            }),
        }
    }
    if problems.is_empty() && !templates.is_empty() {
        Ok(templates)
    } else {
        Err(MetricsConfigError {
            config_map: config_map.to_string(),
            problems,
        })
    }
}

fn parse_template(key: &str, yaml: &str) -> Result<MetricTemplate, String> {
    let raw: RawTemplate = serde_yaml::from_str(yaml).map_err(|e| {
        format!("not a metric template ({e}): write YAML with `query` and one of `max` or `min`")
    })?;
    let bound = match (raw.max, raw.min) {
        (Some(max), None) => TemplateBound::Max(limit("max", max)?),
        (None, Some(min)) => TemplateBound::Min(limit("min", min)?),
        (Some(_), Some(_)) => {
            return Err("has both `max` and `min`: keep one (a metric has one bound)".to_string());
        }
        (None, None) => {
            return Err(
                "has no bound: add `max` or `min`, e.g. `max: 0.05` or `max: stable * 1.2`"
                    .to_string(),
            );
        }
    };
    MetricTemplate::new(key, &raw.query, bound)
}

fn limit(field: &str, raw: RawLimit) -> Result<Limit, String> {
    let invalid = |text: &str| {
        format!(
            "`{field}: {text}` is not a bound: write a number (`{field}: 0.05`) or a bound \
             relative to the stable version (`{field}: stable * 1.2`, `{field}: stable + 0.01`)"
        )
    };
    let text = match raw {
        RawLimit::Number(v) if v.is_finite() => return Ok(Limit::Absolute(v)),
        RawLimit::Number(v) => return Err(invalid(&v.to_string())),
        RawLimit::Text(text) => text,
    };
    let number = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    if let Some(v) = number(&text) {
        return Ok(Limit::Absolute(v));
    }
    let rest = text
        .trim()
        .strip_prefix("stable")
        .ok_or_else(|| invalid(&text))?
        .trim_start();
    let (factor, rest) = match rest.strip_prefix('*') {
        Some(rest) => {
            // The offset's sign, not an exponent's (`1e-3`).
            let end = rest
                .char_indices()
                .skip(1)
                .find(|&(i, c)| {
                    matches!(c, '+' | '-') && !rest[..i].trim_end().ends_with(['e', 'E'])
                })
                .map_or(rest.len(), |(i, _)| i);
            let factor = number(&rest[..end])
                .filter(|f| *f > 0.0)
                .ok_or_else(|| invalid(&text))?;
            (factor, &rest[end..])
        }
        None => (1.0, rest),
    };
    let rest = rest.trim();
    let offset = if rest.is_empty() {
        0.0
    } else if let Some(a) = rest.strip_prefix('+') {
        number(a).ok_or_else(|| invalid(&text))?
    } else if let Some(a) = rest.strip_prefix('-') {
        -number(a).ok_or_else(|| invalid(&text))?
    } else {
        return Err(invalid(&text));
    };
    Ok(Limit::RelativeToStable { factor, offset })
}

#[cfg(test)]
mod tests;
