//! Port names as the API server checks them (`IsValidPortName`), for what
//! it leaves to the consumer: a probe's or a policy's named port.

/// `IsValidPortName`: every reason a name is not an IANA service name, in
/// the API server's order.
pub fn port_name(s: &str) -> Vec<&'static str> {
    let mut out = vec![];
    if s.len() > 15 {
        out.push("must be no more than 15 characters");
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)");
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen");
    }
    out
}

/// A Kubernetes protocol name (`TCP` when absent), in the API server's
/// words when it is none of `TCP`, `UDP` and `SCTP`.
pub fn protocol(p: Option<&str>) -> Result<crate::contract::wit::Protocol, String> {
    use crate::contract::wit::Protocol;
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!(
            "Unsupported value: {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
        )),
    }
}

/// IANA service names (`IsValidPortName`): the first reason a name is not
/// one, as the API server lists them.
pub fn iana_svc_name(s: &str) -> Result<(), &'static str> {
    match port_name(s).first() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_as_the_api_server_checks_them() {
        assert_eq!(iana_svc_name("http"), Ok(()));
        assert_eq!(iana_svc_name("h2c-web"), Ok(()));
        assert_eq!(
            iana_svc_name("8080"),
            Err("must contain at least one letter (a-z)")
        );
        assert_eq!(port_name("-a--b-").len(), 2);
        assert_eq!(
            iana_svc_name("much-too-long-name"),
            Err("must be no more than 15 characters")
        );
    }
}
