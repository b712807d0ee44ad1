//! The CNI protocol as Switchyard speaks it (containernetworking/cni SPEC.md,
//! versions 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0), shared by the `switchyard-cni` plugin
//! binary and the agent's CNI server.
//!
//! The plugin validates what the runtime gave it (environment, JSON, version,
//! fields) and answers VERSION itself; everything else goes to the agent over
//! a unix socket as one [`Request`] and comes back as one [`Response`].

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST: &str = "1.1.0";
/// Where the agent listens unless the network configuration says `socket`.
pub const DEFAULT_SOCKET: &str = "/run/switchyard/cni.sock";
/// The largest network configuration accepted on stdin. A runtime's
/// configuration with a previous result is a few KiB; more is a mistake.
pub const MAX_CONFIG: usize = 1 << 20;
/// The largest request the agent reads: the configuration, the environment
/// (`CNI_ARGS` included) and the JSON around them.
pub const MAX_REQUEST: usize = 4 << 20;
/// The longest a request to the agent may take.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Error codes: the spec's (1-99) and Switchyard's (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: cannot serve ADD, and existing pods may have limited connectivity.
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    /// The agent or its module failed.
    pub const INTERNAL: u32 = 100;
    pub const IPAM: u32 = 101;
    pub const INTERFACE: u32 = 102;
    pub const CHECK: u32 = 103;
}

/// A CNI error: what the plugin prints on failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error as the spec prints it.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// Whether the verb acts on one attachment (container and interface).
    pub fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The `CNI_*` environment, checked for the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: String,
}

fn env_err(msg: impl Into<String>) -> Error {
    Error::new(code::INVALID_ENVIRONMENT, msg)
}

/// Container ids start with an alphanumeric character, then alphanumerics, `_`, `.`, `-`.
pub fn check_container_id(id: &str) -> Result<(), String> {
    let ok = id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else if id.is_empty() {
        Err("CNI_CONTAINERID is empty".into())
    } else {
        Err(format!(
            "CNI_CONTAINERID {id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        ))
    }
}

/// Interface names: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("CNI_IFNAME is empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "CNI_IFNAME {name:?} is {} bytes long; Linux allows at most 15",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "CNI_IFNAME {name:?} is not a valid interface name (no '/', ':' or spaces, not '.' or '..')"
        ));
    }
    Ok(())
}

/// `CNI_ARGS`: `K=V;K2=V2`.
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("CNI_ARGS item {p:?} is not KEY=VALUE"))?;
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("CNI_ARGS key {k:?} must be alphanumeric"));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Read and check the environment for its command.
pub fn read_env(get: impl Fn(&str) -> Option<String>) -> Result<Env, Error> {
    let raw = get("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&raw).ok_or_else(|| {
        env_err(if raw.is_empty() {
            "CNI_COMMAND is not set; it must be one of ADD, DEL, CHECK, GC, STATUS or VERSION"
                .to_string()
        } else {
            format!("CNI_COMMAND {raw:?} is not one of ADD, DEL, CHECK, GC, STATUS or VERSION")
        })
    })?;
    let var = |k: &str| get(k).unwrap_or_default();
    let env = Env {
        command,
        container_id: var("CNI_CONTAINERID"),
        netns: var("CNI_NETNS"),
        ifname: var("CNI_IFNAME"),
        args: vec![],
        path: var("CNI_PATH"),
    };
    // Name every variable that is missing at once, not one per attempt.
    let mut required = vec![];
    if command.per_attachment() {
        required.extend([
            ("CNI_CONTAINERID", &env.container_id),
            ("CNI_IFNAME", &env.ifname),
        ]);
        if command != Command::Del {
            required.push(("CNI_NETNS", &env.netns));
        }
    }
    if command == Command::Gc {
        required.push(("CNI_PATH", &env.path));
    }
    let missing: Vec<&str> = required
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(env_err(format!(
            "{raw} needs {} in the environment, and {} not set",
            missing.join(", "),
            if missing.len() == 1 {
                "it is"
            } else {
                "they are"
            }
        )));
    }
    let args = parse_args(&var("CNI_ARGS")).map_err(env_err)?;
    if command.per_attachment() {
        check_container_id(&env.container_id).map_err(env_err)?;
        check_ifname(&env.ifname).map_err(env_err)?;
    }
    Ok(Env { args, ..env })
}

/// Fields of the spec a network configuration may carry, and ours.
const SPEC_FIELDS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "dns",
    "prevResult",
    "runtimeConfig",
    "capabilities",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];
const OUR_FIELDS: &[&str] = &["socket", "bridge", "mtu", "pools"];

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::new(code::INVALID_CONFIG, msg)
}

/// A value as a message shows it: JSON, cut short when long.
fn shown(v: &Value) -> String {
    const MAX: usize = 200;
    let s = v.to_string();
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s,
    }
}

/// Parse stdin as a network configuration object.
pub fn parse_config(stdin: &[u8]) -> Result<Value, Error> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        Error::new(
            code::DECODE,
            format!("the network configuration on stdin is not valid JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(cfg_err("the network configuration must be a JSON object"));
    }
    Ok(v)
}

fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// A version that does not parse is a decoding failure, as libcni's skel
/// answers it; a version that parses but is not ours is incompatible.
fn offered_version(key: &str, v: &Value) -> Result<String, Error> {
    let undecodable = |what: String| {
        Error::new(
            code::DECODE,
            format!("{key} {what} is not a version such as \"1.1.0\""),
        )
    };
    let s = v.as_str().ok_or_else(|| undecodable(v.to_string()))?;
    version_tuple(s).ok_or_else(|| undecodable(format!("{s:?}")))?;
    Ok(s.to_string())
}

/// The spec version to speak: the highest of `cniVersions` (1.1) or
/// `cniVersion` that this plugin supports.
pub fn negotiate(config: &Value) -> Result<String, Error> {
    let mut offered: Vec<String> = vec![];
    match config.get("cniVersion") {
        Some(v) => offered.push(offered_version("cniVersion", v)?),
        // The spec (and libcni) read a configuration without one as 0.1.0.
        None => {
            return Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "the network configuration has no cniVersion, which the spec reads as 0.1.0; this plugin supports {}: add \"cniVersion\": \"{LATEST}\"",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
    }
    if let Some(list) = config.get("cniVersions") {
        let list = list.as_array().ok_or_else(|| {
            Error::new(
                code::DECODE,
                format!("cniVersions {list} must be a list of versions"),
            )
        })?;
        for v in list {
            offered.push(offered_version("cniVersions entry", v)?);
        }
    }
    offered
        .iter()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .max_by_key(|v| version_tuple(v))
        .cloned()
        .ok_or_else(|| {
            Error::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "incompatible CNI version {}: this plugin supports {}",
                    offered.join(", "),
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })
}

/// Check the network configuration's fields for a command.
pub fn check_config(config: &Value, command: Command, version: &str) -> Result<(), Error> {
    let obj = config
        .as_object()
        .ok_or_else(|| cfg_err("the network configuration must be a JSON object"))?;
    for (k, v) in obj {
        if k == "ipam" {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "unsupported field \"ipam\" = {} in the network configuration: Switchyard assigns addresses itself, from the node's pod CIDRs; remove the ipam section",
                    shown(v)
                ),
            ));
        }
        if !SPEC_FIELDS.contains(&k.as_str()) && !OUR_FIELDS.contains(&k.as_str()) {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "unsupported field {k:?} = {} in the network configuration (Switchyard knows {} and the spec's fields)",
                    shown(v),
                    OUR_FIELDS.join(", ")
                ),
            ));
        }
    }
    match obj.get("name") {
        Some(Value::String(n))
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) => {}
        Some(n) => {
            return Err(cfg_err(format!(
                "name {n} must be letters, digits, '_', '.' and '-'"
            )));
        }
        None => return Err(cfg_err("name is required in the network configuration")),
    }
    if let Some(s) = obj.get("socket") {
        match s.as_str() {
            Some(p) if p.starts_with('/') => {}
            _ => return Err(cfg_err(format!("socket {s} must be an absolute path"))),
        }
    }
    if let Some(b) = obj.get("bridge") {
        let name = b
            .as_str()
            .ok_or_else(|| cfg_err(format!("bridge {b} must be a string")))?;
        check_ifname(name)
            .map_err(|e| cfg_err(format!("bridge: {}", e.replace("CNI_IFNAME", "the name"))))?;
        if !name.starts_with("sy") {
            return Err(cfg_err(format!(
                "bridge {name:?} must start with \"sy\", the names Switchyard's CNI module may manage"
            )));
        }
    }
    if let Some(m) = obj.get("mtu") {
        match m.as_u64() {
            Some(m) if (576..=65535).contains(&m) => {}
            _ => {
                return Err(cfg_err(format!(
                    "mtu {m} must be an integer from 576 to 65535"
                )));
            }
        }
    }
    if let Some(p) = obj.get("pools") {
        let ok = p.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err(cfg_err(format!("pools {p} must be a list of pool names")));
        }
    }
    // DEL must succeed as far as it can: a prevResult it cannot read is
    // ignored there (the agent tears down from its own records).
    if let Some(p) = obj.get("prevResult")
        && !p.is_object()
        && command != Command::Del
    {
        return Err(cfg_err(
            "prevResult must be a JSON object (a previous result)",
        ));
    }
    let since = match command {
        Command::Gc | Command::Status => "1.1.0",
        Command::Check => "0.4.0",
        _ => "0.1.0",
    };
    if version_tuple(version) < version_tuple(since) {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{command:?} needs CNI version {since}, but the configuration speaks {version}"
            ),
        ));
    }
    if command == Command::Gc {
        // A GC without the list would read as "nothing is valid" and tear
        // down every pod of the network; the spec says the runtime passes it.
        if !obj.contains_key("cni.dev/valid-attachments")
            && !obj.contains_key("cni.dev/attachments")
        {
            return Err(cfg_err(
                "GC needs cni.dev/valid-attachments, the list of attachments of this network still in use (an empty list when there are none); without it nothing is collected",
            ));
        }
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            if let Some(list) = obj.get(key) {
                let ok = list.as_array().is_some_and(|a| {
                    a.iter().all(|x| {
                        x.get("containerID").is_some_and(Value::is_string)
                            && x.get("ifname").is_some_and(Value::is_string)
                    })
                });
                if !ok {
                    return Err(cfg_err(format!(
                        "{key} must be a list of {{\"containerID\", \"ifname\"}} objects"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The attachments a GC request says are still in use, or `None` when it
/// does not say (which must not read as "none").
pub fn valid_attachments(config: &Value) -> Option<Vec<(String, String)>> {
    let list = config
        .get("cni.dev/valid-attachments")
        .or_else(|| config.get("cni.dev/attachments"))?
        .as_array()?;
    Some(
        list.iter()
            .filter_map(|x| {
                Some((
                    x["containerID"].as_str()?.to_string(),
                    x["ifname"].as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// The answer to VERSION.
pub fn version_output(config: Option<&Value>) -> Value {
    let asked = config
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST);
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

/// What the plugin sends the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub env: Env,
    /// The network configuration from stdin, as given.
    pub config: Value,
    /// The negotiated spec version.
    pub cni_version: String,
}

/// What the agent answers: the JSON to print, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    Ok(Option<Value>),
    Error(Error),
}

/// Check everything the plugin can check alone and build the request.
pub fn validate(env: Env, stdin: &[u8]) -> Result<Request, (String, Error)> {
    if stdin.len() > MAX_CONFIG {
        return Err((
            LATEST.to_string(),
            cfg_err(format!(
                "the network configuration on stdin is {} bytes; Switchyard accepts at most {MAX_CONFIG} (1 MiB)",
                stdin.len()
            )),
        ));
    }
    let config = parse_config(stdin).map_err(|e| (LATEST.to_string(), e))?;
    let version = negotiate(&config).map_err(|e| (LATEST.to_string(), e))?;
    check_config(&config, env.command, &version).map_err(|e| (version.clone(), e))?;
    Ok(Request {
        env,
        config,
        cni_version: version,
    })
}

/// The agent's socket for a configuration.
pub fn socket_path(config: &Value) -> PathBuf {
    config
        .get("socket")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Send a request to the agent and wait for its answer.
pub fn call_agent(socket: &Path, req: &Request, timeout: Duration) -> Result<Option<Value>, Error> {
    let unavailable = |why: String| {
        let code = if req.env.command == Command::Status {
            code::NOT_AVAILABLE
        } else {
            code::TRY_AGAIN_LATER
        };
        Error {
            code,
            msg: format!(
                "the Switchyard agent is not reachable at {}: {why}",
                socket.display()
            ),
            details: "the agent runs on every node (a DaemonSet); the runtime retries".into(),
        }
    };
    let mut s = UnixStream::connect(socket).map_err(|e| unavailable(e.to_string()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| unavailable(e.to_string()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| unavailable(e.to_string()))?;
    let body = serde_json::to_vec(req).map_err(|e| Error::new(code::INTERNAL, e.to_string()))?;
    if body.len() > MAX_REQUEST {
        // The agent would stop reading, and a broken pipe reads as "try again".
        return Err(Error::new(
            code::INVALID_CONFIG,
            format!(
                "the request (network configuration and CNI_ARGS) is {} bytes; the agent accepts at most {MAX_REQUEST}",
                body.len()
            ),
        ));
    }
    s.write_all(&body).map_err(|e| unavailable(e.to_string()))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| unavailable(e.to_string()))?;
    let mut answer = vec![];
    s.read_to_end(&mut answer).map_err(|e| {
        Error::new(
            code::TRY_AGAIN_LATER,
            format!(
                "no answer from the Switchyard agent at {}: {e}",
                socket.display()
            ),
        )
    })?;
    match serde_json::from_slice::<Response>(&answer) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error(e)) => Err(e),
        Err(e) => Err(Error::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the Switchyard agent closed the connection without a valid answer ({} bytes: {e}); it may have restarted",
                answer.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, Error> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read_env(|k| m.get(k).cloned())
    }

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    #[test]
    fn environment_is_checked_per_command() {
        assert!(env(&add_env()).is_ok());
        assert_eq!(env(&[]).unwrap_err().code, code::INVALID_ENVIRONMENT);
        assert!(
            env(&[("CNI_COMMAND", "JUMP")])
                .unwrap_err()
                .msg
                .contains("\"JUMP\"")
        );
        let mut e = add_env();
        e[3] = ("CNI_IFNAME", "a-very-long-interface-name");
        let err = env(&e).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("at most 15"), "{}", err.msg);
        let mut e = add_env();
        e[1] = ("CNI_CONTAINERID", "-bad");
        assert_eq!(env(&e).unwrap_err().code, 4);
        let mut e = add_env();
        e.retain(|(k, _)| *k != "CNI_NETNS");
        assert!(env(&e).unwrap_err().msg.contains("needs CNI_NETNS"));
        let err = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert!(
            err.msg
                .contains("needs CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS in the environment"),
            "{}",
            err.msg
        );
        // DEL needs no namespace.
        e[0] = ("CNI_COMMAND", "DEL");
        assert!(env(&e).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "STATUS")]).unwrap().command,
            Command::Status
        );
        assert!(
            env(&[("CNI_COMMAND", "GC")])
                .unwrap_err()
                .msg
                .contains("CNI_PATH")
        );
        let mut e = add_env();
        e.push((
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1",
        ));
        assert_eq!(env(&e).unwrap().args.len(), 3);
        e.pop();
        e.push(("CNI_ARGS", "nonsense"));
        assert_eq!(env(&e).unwrap_err().code, 4);
    }

    #[test]
    fn versions_are_negotiated() {
        assert_eq!(negotiate(&json!({"cniVersion": "1.0.0"})).unwrap(), "1.0.0");
        assert_eq!(
            negotiate(&json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0", "9.0.0"]}))
                .unwrap(),
            "1.1.0"
        );
        assert_eq!(negotiate(&json!({"cniVersion": "0.3.1"})).unwrap(), "0.3.1");
        let e = negotiate(&json!({"cniVersion": "0.2.0"})).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.2.0") && e.msg.contains("1.1.0"));
        // As libcni: absent is 0.1.0 (incompatible), unparsable is undecodable.
        let e = negotiate(&json!({"name": "x"})).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("no cniVersion"), "{}", e.msg);
        for bad in [json!("1.x"), json!(1), json!("1.0.0.0")] {
            let e = negotiate(&json!({"cniVersion": bad})).unwrap_err();
            assert_eq!(e.code, code::DECODE, "{bad}: {}", e.msg);
        }
        assert_eq!(
            negotiate(&json!({"cniVersion": "1.0.0", "cniVersions": ["x"]}))
                .unwrap_err()
                .code,
            code::DECODE
        );
    }

    #[test]
    fn configuration_fields_are_checked() {
        let ok = json!({"cniVersion": "1.1.0", "name": "pods", "type": "switchyard-cni", "mtu": 1450, "bridge": "sy0", "runtimeConfig": {}});
        check_config(&ok, Command::Add, "1.1.0").unwrap();
        let mut typo = ok.clone();
        typo["brige"] = json!("sy0");
        let e = check_config(&typo, Command::Add, "1.1.0").unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        assert!(e.msg.contains("\"brige\" = \"sy0\""), "{}", e.msg);
        let mut ipam = ok.clone();
        ipam["ipam"] = json!({"type": "host-local"});
        let e = check_config(&ipam, Command::Add, "1.1.0").unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        assert!(
            e.msg.contains(r#""ipam" = {"type":"host-local"}"#),
            "{}",
            e.msg
        );
        let mut long = ok.clone();
        long["extra"] = json!("x".repeat(5000));
        let e = check_config(&long, Command::Add, "1.1.0").unwrap_err();
        assert!(
            e.msg.len() < 600 && e.msg.contains("5002 bytes"),
            "{}",
            e.msg
        );
        let mut mtu = ok.clone();
        mtu["mtu"] = json!(70000);
        assert_eq!(
            check_config(&mtu, Command::Add, "1.1.0").unwrap_err().code,
            code::INVALID_CONFIG
        );
        let mut br = ok.clone();
        br["bridge"] = json!("eth0");
        assert!(
            check_config(&br, Command::Add, "1.1.0")
                .unwrap_err()
                .msg
                .contains("must start with \"sy\"")
        );
        assert_eq!(
            check_config(&ok, Command::Status, "1.0.0")
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let e = check_config(&ok, Command::Check, "0.3.1").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.4.0"), "{}", e.msg);
        check_config(&ok, Command::Add, "0.3.0").unwrap();
        assert_eq!(parse_config(b"{not json").unwrap_err().code, code::DECODE);
        assert_eq!(parse_config(b"[1]").unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn gc_attachments_and_version_output() {
        let c = json!({"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]});
        assert_eq!(
            valid_attachments(&c),
            Some(vec![("a".to_string(), "eth0".to_string())])
        );
        assert_eq!(valid_attachments(&json!({"name": "pods"})), None);
        let gc = json!({"cniVersion": "1.1.0", "name": "pods"});
        let e = check_config(&gc, Command::Gc, "1.1.0").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
        let v = version_output(Some(&json!({"cniVersion": "1.0.0"})));
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_output(None)["cniVersion"], LATEST);
    }

    #[test]
    fn an_absent_agent_means_try_again_or_not_available() {
        let env = read_env(|k| {
            add_env()
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let mut req = Request {
            env,
            config: json!({}),
            cni_version: LATEST.into(),
        };
        let e = call_agent(
            Path::new("/nonexistent/cni.sock"),
            &req,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        req.env.command = Command::Status;
        assert_eq!(
            call_agent(
                Path::new("/nonexistent/cni.sock"),
                &req,
                Duration::from_secs(1)
            )
            .unwrap_err()
            .code,
            code::NOT_AVAILABLE
        );
    }
}
