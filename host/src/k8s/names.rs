//! Names and labels as the API server checks them (apimachinery's
//! `IsDNS1123Label`, `IsDNS1123Subdomain`, `IsQualifiedName`,
//! `IsValidLabelValue`), with its messages.

const NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A lowercase RFC 1123 subdomain (at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A label key (`IsQualifiedName`), as the field `at` would be reported.
pub fn check_key(key: &str, at: &str) -> Result<(), String> {
    let bad = |msg: &str| Err(format!("{at}: Invalid value: {key:?}: {msg}"));
    let name = match key.split('/').collect::<Vec<_>>()[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                return bad("prefix part must be non-empty");
            }
            if !is_dns1123_subdomain(prefix) {
                return bad(&format!("prefix part {SUBDOMAIN_MSG}"));
            }
            name
        }
        _ => {
            return bad(&format!(
                "a qualified name {NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
        }
    };
    if name.is_empty() {
        return bad("name part must be non-empty");
    }
    if name.len() > 63 {
        return bad("name part must be no more than 63 characters");
    }
    if !is_name(name) {
        return bad(&format!("name part {NAME_MSG}"));
    }
    Ok(())
}

/// A label value (`IsValidLabelValue`), as the field `at` would be reported.
pub fn check_value(value: &str, at: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!(
            "{at}: Invalid value: {value:?}: must be no more than 63 characters"
        ));
    }
    if !value.is_empty() && !is_name(value) {
        return Err(format!("{at}: Invalid value: {value:?}: {VALUE_MSG}"));
    }
    Ok(())
}

/// A lowercase RFC 1123 label: at most 63 characters, letters, digits and
/// `-`, neither first nor last.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(
            is_dns1123_label("proxy-nftables") && !is_dns1123_label("-a") && !is_dns1123_label("A")
        );
        assert!(is_dns1123_subdomain("example.com") && !is_dns1123_subdomain("Example.com"));
        assert!(check_key("switchyard.dev/role", "k").is_ok());
        assert!(
            check_key("/x", "k")
                .unwrap_err()
                .contains("prefix part must be non-empty")
        );
        assert!(check_value("a_b.c", "v").is_ok() && check_value("-a", "v").is_err());
    }
}
