//! CNI results: from the module's typed result to the JSON each spec version
//! prints, and chained after a previous plugin's result.

use crate::contract::bindings::imports::switchyard::plugin::cni_types::CniResult;
use crate::runtime::{wit_to_ip, wit_to_net};
use serde_json::{Value, json};

/// The result in the 1.1 form (what the agent stores).
pub fn to_json(r: &CniResult) -> Value {
    let cidr = |c| wit_to_net(c).map(|n| n.to_string()).unwrap_or_default();
    json!({
        "cniVersion": "1.1.0",
        "interfaces": r.interfaces.iter().map(|i| {
            let mut v = json!({"name": i.name, "mac": i.mac});
            if let Some(m) = i.mtu { v["mtu"] = json!(m); }
            if let Some(s) = &i.sandbox { v["sandbox"] = json!(s); }
            v
        }).collect::<Vec<_>>(),
        "ips": r.ips.iter().map(|ip| {
            let mut v = json!({"address": cidr(&ip.address)});
            if let Some(g) = &ip.gateway { v["gateway"] = json!(wit_to_ip(g).to_string()); }
            if let Some(i) = ip.interface { v["interface"] = json!(i); }
            v
        }).collect::<Vec<_>>(),
        "routes": r.routes.iter().map(|rt| {
            let mut v = json!({"dst": cidr(&rt.dst)});
            if let Some(g) = &rt.gw { v["gw"] = json!(wit_to_ip(g).to_string()); }
            if let Some(m) = rt.mtu { v["mtu"] = json!(m); }
            v
        }).collect::<Vec<_>>(),
        "dns": match &r.dns {
            Some(d) => {
                let mut v = json!({});
                if !d.nameservers.is_empty() { v["nameservers"] = json!(d.nameservers); }
                if let Some(dom) = &d.domain { v["domain"] = json!(dom); }
                if !d.search.is_empty() { v["search"] = json!(d.search); }
                if !d.options.is_empty() { v["options"] = json!(d.options); }
                v
            }
            None => json!({}),
        },
    })
}

/// Chain after a previous plugin: its interfaces, addresses and routes come
/// first, ours follow with their interface indexes shifted.
pub fn after(prev: Option<&Value>, ours: Value) -> Value {
    let Some(prev) = prev.filter(|p| p.is_object()) else {
        return ours;
    };
    let list = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list(prev, "interfaces");
    let offset = interfaces.len() as u64;
    interfaces.extend(list(&ours, "interfaces"));
    let mut ips = list(prev, "ips");
    ips.extend(list(&ours, "ips").into_iter().map(|mut ip| {
        if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = json!(i + offset);
        }
        ip
    }));
    let mut routes = list(prev, "routes");
    routes.extend(list(&ours, "routes"));
    let dns = match prev.get("dns") {
        Some(d) if d.as_object().is_some_and(|o| !o.is_empty()) => d.clone(),
        _ => ours["dns"].clone(),
    };
    json!({"cniVersion": ours["cniVersion"], "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns})
}

/// The result as spec `version` prints it.
pub fn for_version(v: &Value, version: &str) -> Value {
    let mut out = v.clone();
    out["cniVersion"] = json!(version);
    if version == "1.1.0" {
        return out;
    }
    // mtu on interfaces and routes is new in 1.1.
    for key in ["interfaces", "routes"] {
        if let Some(list) = out.get_mut(key).and_then(Value::as_array_mut) {
            for item in list {
                if let Some(o) = item.as_object_mut() {
                    o.remove("mtu");
                }
            }
        }
    }
    // Before 1.0, each address says its family.
    if matches!(version, "0.3.0" | "0.3.1" | "0.4.0")
        && let Some(ips) = out.get_mut("ips").and_then(Value::as_array_mut)
    {
        for ip in ips {
            let v6 = ip["address"].as_str().is_some_and(|a| a.contains(':'));
            ip["version"] = json!(if v6 { "6" } else { "4" });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "syv1", "mac": "aa", "mtu": 1500}, {"name": "eth0", "mac": "bb", "mtu": 1500, "sandbox": "/ns"}],
            "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1}, {"address": "fd00::2/64", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}], "dns": {}})
    }

    #[test]
    fn older_versions_drop_new_fields_and_add_ip_versions() {
        let v = for_version(&ours(), "0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let v = for_version(&ours(), "0.3.1");
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = for_version(&ours(), "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert_eq!(for_version(&ours(), "1.1.0")["interfaces"][0]["mtu"], 1500);
    }

    #[test]
    fn chaining_appends_and_shifts_interface_indexes() {
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [{"address": "192.0.2.1/32", "interface": 0}], "dns": {"nameservers": ["10.96.0.10"]}});
        let v = after(Some(&prev), ours());
        assert_eq!(v["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(v["ips"][1]["interface"], 2);
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(after(None, ours()), ours());
    }
}
