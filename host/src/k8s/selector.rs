//! Kubernetes label selectors (`metav1.LabelSelector`), evaluated as the API
//! server evaluates them: every `matchLabels` entry and every
//! `matchExpressions` requirement must hold; `NotIn` and `DoesNotExist` hold
//! for a missing key; an empty selector selects everything.
//!
//! A selector the API server would reject (an unknown operator, `In` without
//! values, a malformed key or value) is an error, never a match or a miss:
//! a wrong selector must not silently widen or narrow a policy.

use super::names::{check_key, check_value};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};

/// One requirement of a checked selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    fn holds<'a>(&self, get: &impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }

    fn text(&self) -> String {
        let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Equals(k, v) => format!("{k}={v}"),
            Requirement::In(k, vs) => format!("{k} in ({})", set(vs)),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", set(vs)),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        }
    }
}

/// A checked label selector: build it once with [`Selector::new`], then
/// match it against many label sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Check `sel`. `path` is the selector's field path for messages (for
    /// example `spec.podSelector`); empty for paths relative to the selector.
    pub fn new(sel: &LabelSelector, path: &str) -> Result<Selector, String> {
        let field = |child: &str| {
            if path.is_empty() {
                child.to_string()
            } else {
                format!("{path}.{child}")
            }
        };
        let mut requirements = vec![];
        for (k, v) in sel.match_labels.iter().flatten() {
            let at = field("matchLabels");
            check_key(k, &at)?;
            check_value(v, &at)?;
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = field(&format!("matchExpressions[{i}]"));
            let values = e.values.as_deref().unwrap_or_default();
            let set = || values.iter().cloned().collect::<BTreeSet<_>>();
            let r = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "{at}.values: Required value: must be specified when operator is 'In' or 'NotIn'"
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "{at}.values: Forbidden: may not be specified when operator is 'Exists' or 'DoesNotExist'"
                    ));
                }
                "In" => Requirement::In(e.key.clone(), set()),
                "NotIn" => Requirement::NotIn(e.key.clone(), set()),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(format!(
                        "{at}.operator: Invalid value: {other:?}: {other:?} is not a valid label selector operator"
                    ));
                }
            };
            check_key(&e.key, &format!("{at}.key"))?;
            for (j, v) in values.iter().enumerate() {
                check_value(v, &format!("{at}.values[{j}]"))?;
            }
            requirements.push(r);
        }
        // Sorted by key, as `labels.Selector` sorts them (stable: for one
        // key, matchLabels first, then expressions in order).
        requirements.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(Selector { requirements })
    }

    /// Whether the selector is empty (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether labels looked up with `get` satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.holds(&get))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether labels given as (key, value) pairs (the contract's `labels`)
    /// satisfy every requirement.
    pub fn matches_pairs(&self, labels: &[(String, String)]) -> bool {
        self.matches_with(|k| {
            labels
                .iter()
                .find(|(lk, _)| lk == k)
                .map(|(_, v)| v.as_str())
        })
    }

    /// kubectl-like text: `app=db,tier in (a,b),!x`; `all` when empty.
    pub fn describe(&self) -> String {
        if self.requirements.is_empty() {
            return "all".to_string();
        }
        self.requirements
            .iter()
            .map(Requirement::text)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether `labels` match `sel`. An invalid selector is an error, in the API
/// server's words, with the field path relative to the selector.
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    Ok(Selector::new(sel, "")?.matches(labels))
}

/// kubectl-like text for `sel`: `app=db,tier in (a,b),tier notin (c),x,!y`,
/// requirements sorted by key; `all` for an empty selector. An invalid
/// selector is described as well as it can be, never rejected.
pub fn describe(sel: &LabelSelector) -> String {
    if let Ok(s) = Selector::new(sel, "") {
        return s.describe();
    }
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(format!("{} {} ({values})", e.key, e.operator));
    }
    if parts.is_empty() {
        "all".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel(json!({}));
        assert!(matches(&s, &labels(&[])).unwrap());
        assert!(matches(&s, &labels(&[("app", "db")])).unwrap());
        assert_eq!(describe(&s), "all");
        let s = sel(json!({"matchLabels": {}, "matchExpressions": []}));
        assert!(matches(&s, &labels(&[])).unwrap());
        assert_eq!(describe(&s), "all");
    }

    #[test]
    fn match_labels_are_anded() {
        let s = sel(json!({"matchLabels": {"app": "db", "tier": "back"}}));
        assert!(matches(&s, &labels(&[("app", "db"), ("tier", "back"), ("x", "y")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "db")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "db"), ("tier", "front")])).unwrap());
    }

    #[test]
    fn operators() {
        let s = sel(json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
        ]}));
        assert!(matches(&s, &labels(&[("tier", "a")])).unwrap());
        assert!(!matches(&s, &labels(&[("tier", "c")])).unwrap());
        assert!(!matches(&s, &labels(&[])).unwrap());

        let s = sel(json!({"matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["a", "b"]},
        ]}));
        assert!(!matches(&s, &labels(&[("tier", "a")])).unwrap());
        assert!(matches(&s, &labels(&[("tier", "c")])).unwrap());
        assert!(
            matches(&s, &labels(&[])).unwrap(),
            "NotIn holds for a missing key"
        );

        let s = sel(json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]}));
        assert!(matches(&s, &labels(&[("x", "")])).unwrap());
        assert!(!matches(&s, &labels(&[("y", "")])).unwrap());

        let s = sel(json!({"matchExpressions": [
            {"key": "x", "operator": "DoesNotExist", "values": []},
        ]}));
        assert!(!matches(&s, &labels(&[("x", "1")])).unwrap());
        assert!(matches(&s, &labels(&[])).unwrap());
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = sel(json!({
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "x", "operator": "DoesNotExist"},
            ],
        }));
        assert!(matches(&s, &labels(&[("app", "db"), ("tier", "b")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "db"), ("tier", "b"), ("x", "1")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "b")])).unwrap());
        assert_eq!(describe(&s), "app=db,tier in (a,b),!x");
        let checked = Selector::new(&s, "spec.podSelector").unwrap();
        assert!(checked.matches_pairs(&[("app".into(), "db".into()), ("tier".into(), "a".into())]));
        assert!(!checked.is_empty());
    }

    #[test]
    fn describe_sorts_and_names_every_operator() {
        let s = sel(json!({
            "matchLabels": {"z": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "NotIn", "values": ["y", "x"]},
                {"key": "a", "operator": "Exists"},
            ],
        }));
        assert_eq!(describe(&s), "a,b notin (x,y),z=1");
        // An invalid selector is still described.
        let s =
            sel(json!({"matchExpressions": [{"key": "a", "operator": "Foo", "values": ["1"]}]}));
        assert_eq!(describe(&s), "a Foo (1)");
    }

    #[test]
    fn invalid_selectors_are_errors() {
        let err = |v| matches(&sel(v), &labels(&[])).unwrap_err();
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}));
        assert!(
            e.contains("\"Foo\" is not a valid label selector operator"),
            "{e}"
        );
        assert!(e.starts_with("matchExpressions[0].operator: "), "{e}");
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "In"}]}));
        assert_eq!(
            e,
            "matchExpressions[0].values: Required value: must be specified when operator is 'In' or 'NotIn'"
        );
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}));
        assert!(e.contains("Required value"), "{e}");
        let e = err(json!({"matchExpressions": [
            {"key": "a", "operator": "Exists"},
            {"key": "a", "operator": "DoesNotExist", "values": ["x"]},
        ]}));
        assert_eq!(
            e,
            "matchExpressions[1].values: Forbidden: may not be specified when operator is 'Exists' or 'DoesNotExist'"
        );
        // Operators are case sensitive, as in the API server.
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}));
        assert!(e.contains("\"in\" is not a valid"), "{e}");

        let e = Selector::new(
            &sel(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "spec.podSelector",
        )
        .unwrap_err();
        assert!(
            e.starts_with("spec.podSelector.matchExpressions[0].values: Required value"),
            "{e}"
        );
    }

    #[test]
    fn invalid_keys_and_values_are_errors() {
        let err = |v| matches(&sel(v), &labels(&[])).unwrap_err();
        let e = err(json!({"matchLabels": {"bad key": "x"}}));
        assert!(
            e.starts_with("matchLabels: Invalid value: \"bad key\": name part"),
            "{e}"
        );
        let e = err(json!({"matchLabels": {"app": "-x"}}));
        assert!(e.contains("a valid label must be an empty string"), "{e}");
        let e = err(json!({"matchLabels": {"Example.com/app": "x"}}));
        assert!(
            e.contains("prefix part a lowercase RFC 1123 subdomain"),
            "{e}"
        );
        let e = err(json!({"matchLabels": {"a/b/c": "x"}}));
        assert!(e.contains("a qualified name"), "{e}");
        let e = err(json!({"matchExpressions": [{"key": "/a", "operator": "Exists"}]}));
        assert!(
            e.starts_with(
                "matchExpressions[0].key: Invalid value: \"/a\": prefix part must be non-empty"
            ),
            "{e}"
        );
        let long = "v".repeat(64);
        let e = err(
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", long]}]}),
        );
        assert!(
            e.starts_with("matchExpressions[0].values[1]: Invalid value"),
            "{e}"
        );
        assert!(e.contains("no more than 63 characters"), "{e}");
        // Valid ones, for contrast.
        let s = sel(json!({"matchLabels": {"kubernetes.io/metadata.name": "prod", "empty": ""}}));
        assert!(
            matches(
                &s,
                &labels(&[("kubernetes.io/metadata.name", "prod"), ("empty", "")])
            )
            .unwrap()
        );
    }
}
