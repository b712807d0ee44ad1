//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), with the
//! API server's semantics and validation, for modules that select pods from
//! their config.
//!
//! ```
//! use switchyard_sdk::labels::LabelSelector;
//!
//! let sel: LabelSelector = serde_json::from_str(r#"{
//!     "matchLabels": {"app": "web"},
//!     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]
//! }"#).unwrap();
//! sel.validate().unwrap();
//! let labels = vec![("app".to_string(), "web".to_string()), ("tier".to_string(), "edge".to_string())];
//! assert!(sel.matches(&labels));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Value of `key` in a label list, if present.
pub fn get<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A `metav1.LabelSelector`. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key's value is compared.
    pub operator: Operator,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A selector operator. Anything else is rejected when the selector is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The value is one of `values`.
    In,
    /// The key is absent or its value is not one of `values`.
    NotIn,
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether the selector selects an object with these labels.
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| get(labels, k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether this is the empty selector (which selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Check the selector as the API server does. `path` is the field path
    /// used in messages, for example `spec.podSelector`.
    pub fn validate_at(&self, path: &str) -> Result<(), String> {
        for (k, v) in &self.match_labels {
            validate_key(k)
                .map_err(|e| format!("{path}.matchLabels: Invalid value: {k:?}: {e}"))?;
            validate_value(v)
                .map_err(|e| format!("{path}.matchLabels: Invalid value: {v:?}: {e}"))?;
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            validate_key(&r.key)
                .map_err(|e| format!("{at}.key: Invalid value: {:?}: {e}", r.key))?;
            match r.operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => {
                    return Err(format!(
                        "{at}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                    return Err(format!(
                        "{at}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    ));
                }
                _ => {}
            }
            for v in &r.values {
                validate_value(v).map_err(|e| format!("{at}.values: Invalid value: {v:?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// [`LabelSelector::validate_at`] with the path `selector`.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at("selector")
    }
}

impl Requirement {
    /// Whether one label set satisfies this requirement.
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        let v = get(labels, &self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Validate a label key: an optional DNS-subdomain prefix and a name.
pub fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    if !is_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)".into());
    }
    Ok(())
}

/// Validate a label value: empty, or a name part of at most 63 characters.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name_part(value) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(json: &str) -> LabelSelector {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&[]));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(sel(r#"{"matchLabels":{"app":"web"}}"#).matches(&l));
        assert!(!sel(r#"{"matchLabels":{"app":"db"}}"#).matches(&l));
        assert!(
            sel(r#"{"matchExpressions":[{"key":"tier","operator":"In","values":["front"]}]}"#)
                .matches(&l)
        );
        assert!(
            !sel(r#"{"matchExpressions":[{"key":"tier","operator":"NotIn","values":["front"]}]}"#)
                .matches(&l)
        );
        // NotIn matches objects without the key at all.
        assert!(
            sel(r#"{"matchExpressions":[{"key":"zone","operator":"NotIn","values":["a"]}]}"#)
                .matches(&l)
        );
        assert!(sel(r#"{"matchExpressions":[{"key":"app","operator":"Exists"}]}"#).matches(&l));
        assert!(
            sel(r#"{"matchExpressions":[{"key":"zone","operator":"DoesNotExist"}]}"#).matches(&l)
        );
        // All terms are ANDed.
        assert!(!sel(r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"zone","operator":"Exists"}]}"#).matches(&l));
    }

    #[test]
    fn bad_operator_is_rejected_when_parsed() {
        let e = serde_json::from_str::<LabelSelector>(
            r#"{"matchExpressions":[{"key":"a","operator":"Like","values":["x"]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Like"), "{e}");
    }

    #[test]
    fn validation_messages_name_the_field() {
        let e = sel(r#"{"matchExpressions":[{"key":"a","operator":"In"}]}"#)
            .validate_at("spec.podSelector")
            .unwrap_err();
        assert!(
            e.starts_with("spec.podSelector.matchExpressions[0].values: Required value"),
            "{e}"
        );
        let e = sel(r#"{"matchLabels":{"-bad":"x"}}"#)
            .validate()
            .unwrap_err();
        assert!(
            e.contains("selector.matchLabels: Invalid value: \"-bad\""),
            "{e}"
        );
        assert!(
            sel(r#"{"matchLabels":{"kubernetes.io/metadata.name":"prod"}}"#)
                .validate()
                .is_ok()
        );
        assert!(validate_value(&"x".repeat(64)).is_err());
    }
}
