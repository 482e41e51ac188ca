//! Names of Kubernetes objects, Istio subsets and routes, label keys and label values,
//! checked by the rules the API server and Istio apply, so that a bad name is reported
//! on the Service instead of failing later as a rejected patch.

use super::values::InvalidValue;

fn invalid<T>(problem: impl Into<String>) -> Result<T, InvalidValue> {
    Err(InvalidValue(problem.into()))
}

/// The name of an object in the Service's namespace (VirtualService, DestinationRule,
/// ConfigMap): a DNS-1123 subdomain, at most 253 characters.
pub fn parse_object_name(text: &str) -> Result<String, InvalidValue> {
    if text.contains('/') {
        return invalid(
            "give the name only: weir works in the Service's own namespace, so no namespace/ prefix",
        );
    }
    dns_subdomain(text)?;
    Ok(text.to_owned())
}

/// The name of a Service in the opted-in Service's namespace: a DNS-1035 label, as the
/// API server requires of Service names.
pub fn parse_service_name(text: &str) -> Result<String, InvalidValue> {
    if text.contains('/') || text.contains('.') {
        return invalid(
            "give the Service's name only: weir works in the Service's own namespace, \
             so no namespace/ prefix and no host name",
        );
    }
    const RULE: &str = "the API server's rule for Service names";
    dns_label(text, RULE)?;
    if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid(format!("must start with a lowercase letter ({RULE})"));
    }
    Ok(text.to_owned())
}

/// A DestinationRule subset name: Istio requires a DNS-1123 label.
pub fn parse_subset_name(text: &str) -> Result<String, InvalidValue> {
    dns_label(text, "Istio's rule for subset names")?;
    Ok(text.to_owned())
}

/// The name of an HTTP route in a VirtualService. Istio allows any string; an empty one
/// cannot name a route, and whitespace is almost certainly a copy-paste slip.
/// The longest route name accepted: as long as a Kubernetes object name, which is more
/// than any route needs; a longer one is a mistake, and would be quoted in messages.
pub const MAX_ROUTE_NAME: usize = 253;

pub fn parse_route_name(text: &str) -> Result<String, InvalidValue> {
    if text.is_empty() {
        return invalid("must not be empty");
    }
    if text.chars().count() > MAX_ROUTE_NAME {
        return invalid(format!("must be at most {MAX_ROUTE_NAME} characters"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("must not contain spaces or control characters");
    }
    Ok(text.to_owned())
}

/// A Kubernetes label key: an optional DNS-1123 subdomain prefix and `/`, then a name
/// of at most 63 characters of letters, digits, `-`, `_` and `.`, starting and ending
/// with a letter or digit (`version`, `app.kubernetes.io/version`).
pub fn parse_label_key(text: &str) -> Result<String, InvalidValue> {
    let name = match text.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix)
                .map_err(|InvalidValue(problem)| InvalidValue(format!("its prefix {problem}")))?;
            name
        }
        None => text,
    };
    label_name(name, "its name")?;
    Ok(text.to_owned())
}

/// A version: the value of the version label on a Deployment's pods. A Kubernetes label
/// value that is not empty: at most 63 characters of letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit (`v2`, `2.4.1`).
pub fn parse_version(text: &str) -> Result<String, InvalidValue> {
    label_name(text, "a version")?;
    Ok(text.to_owned())
}

/// The name part of a label key, or a non-empty label value: the same rule.
fn label_name(text: &str, what: &str) -> Result<(), InvalidValue> {
    if text.is_empty() {
        return invalid(format!("{what} must not be empty"));
    }
    if text.len() > 63 {
        return invalid(format!("{what} must be at most 63 characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !text.chars().all(allowed) || !starts_and_ends_alphanumeric(text) {
        return invalid(format!(
            "{what} must consist of letters, digits, '-', '_' and '.', \
             and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain, as Kubernetes names objects.
fn dns_subdomain(text: &str) -> Result<(), InvalidValue> {
    if text.is_empty() {
        return invalid("must not be empty");
    }
    if text.len() > 253 {
        return invalid("must be at most 253 characters");
    }
    if text.chars().any(|c| c.is_ascii_uppercase()) {
        return invalid("must be lowercase");
    }
    let label_ok = |label: &str| {
        label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && starts_and_ends_alphanumeric(label)
    };
    if !text.split('.').all(label_ok) {
        return invalid(
            "must consist of lowercase letters, digits, '-' and '.', \
             and start and end with a letter or digit",
        );
    }
    Ok(())
}

/// RFC 1123 label.
fn dns_label(text: &str, rule: &str) -> Result<(), InvalidValue> {
    if text.is_empty() {
        return invalid("must not be empty");
    }
    if text.len() > 63 {
        return invalid("must be at most 63 characters");
    }
    if text.chars().any(|c| c.is_ascii_uppercase()) {
        return invalid("must be lowercase");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !text.chars().all(allowed) || !starts_and_ends_alphanumeric(text) {
        return invalid(format!(
            "must consist of lowercase letters, digits and '-', \
             and start and end with a letter or digit ({rule})"
        ));
    }
    Ok(())
}

fn starts_and_ends_alphanumeric(text: &str) -> bool {
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    alphanumeric(text.chars().next()) && alphanumeric(text.chars().next_back())
}
