//! What is wrong with a Service's annotations, worded for the person who wrote them.

use std::borrow::Cow;
use std::fmt;

use thiserror::Error;

/// Longest part of a bad value an error keeps: enough to recognise it, short enough for
/// a Kubernetes Event.
const VALUE_SHOWN: usize = 80;

/// One bad annotation. Its message names the annotation, the value found, what is wrong
/// and a valid line to copy:
///
/// `weir.dev/steps: "10,5,50" is not valid: steps must be strictly ascending: 5 comes
/// after 10; for example weir.dev/steps: "10,25,50"`
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{annotation}: {value:?} is not valid: {problem}; for example {example}")]
pub struct SpecError {
    /// The annotation at fault, as written on the Service: one of [`super::keys`], or an
    /// unknown key in weir's namespace (a typo).
    pub annotation: Cow<'static, str>,
    /// The value found, cut to its first 80 characters.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
    /// A valid annotation line, e.g. `weir.dev/steps: "10,25,50"`. For an unknown key,
    /// a line of the key it most likely meant; for a key that lacks its partner (one
    /// half of the slow-share gate), a line of the partner.
    pub example: &'static str,
}

impl SpecError {
    pub(crate) fn new(
        annotation: impl Into<Cow<'static, str>>,
        value: &str,
        problem: impl Into<String>,
        example: &'static str,
    ) -> Self {
        let value = match value.char_indices().nth(VALUE_SHOWN) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        SpecError {
            annotation: annotation.into(),
            value,
            problem: problem.into(),
            example,
        }
    }
}

/// Every problem found in a Service's annotations, in the order of the user contract
/// (unknown keys last). Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(Vec<SpecError>);

impl std::error::Error for SpecErrors {}

impl SpecErrors {
    /// `None` when there is nothing wrong.
    pub(crate) fn from_vec(errors: Vec<SpecError>) -> Option<Self> {
        (!errors.is_empty()).then_some(SpecErrors(errors))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, SpecError> {
        self.0.iter()
    }

    pub fn as_slice(&self) -> &[SpecError] {
        &self.0
    }

    /// The problem with `annotation`, if there is one.
    pub fn get(&self, annotation: &str) -> Option<&SpecError> {
        self.0.iter().find(|error| error.annotation == annotation)
    }
}

/// One problem per line.
impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl IntoIterator for SpecErrors {
    type Item = SpecError;
    type IntoIter = std::vec::IntoIter<SpecError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a SpecErrors {
    type Item = &'a SpecError;
    type IntoIter = std::slice::Iter<'a, SpecError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
