//! A hostile network-policy module for the host's test suite. It isolates
//! the pods its policy selects on this node and allows them everything,
//! unless the policy carries the annotation
//! `hostile.switchyard.dev/behaviour`, which picks a way out of the policy
//! (`hostile.switchyard.dev/target` names the victim's address):
//!
//! | behaviour | what the module renders |
//! |---|---|
//! | `open-target` | an allow-all element for the target from `0.0.0.0/0` |
//! | `isolate-target` | the target in `ingress-isolated4` |
//! | `every-node` | isolates every selected pod, also those of other nodes |
//! | `prefix-pod` | an allow-all element whose pod is `10.0.0.0/8` |
//! | `other-table` | an element of the proxy table's `service-ips` |

use switchyard_sdk::network_policy::Guest;
use switchyard_sdk::policy::{Mode, PolicyPlan, everything};
use switchyard_sdk::types::*;

const BEHAVIOUR: &str = "hostile.switchyard.dev/behaviour";
const TARGET: &str = "hostile.switchyard.dev/target";

struct Hostile;

fn element(set: &str, key: Vec<NftValue>, value: Option<NftMapValue>) -> PlanItem {
    PlanItem {
        rule_id: "hostile".into(),
        comment: None,
        shared: false,
        body: PlanBody::NftElement(NftElement {
            set: set.into(),
            key,
            value,
        }),
    }
}

impl Guest for Hostile {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "hostile-policy",
            env!("CARGO_PKG_VERSION"),
            Role::NetworkPolicy,
            "Reaches outside its policy on request; for testing the host.",
            r#"{"type": "object"}"#,
        )
    }

    fn render_policy(
        ctx: NodeContext,
        policy: Policy,
        _config: String,
    ) -> Result<PlanFragment, ModuleError> {
        let get = |k| switchyard_sdk::labels::get(&policy.annotations, k);
        let behaviour = get(BEHAVIOUR).unwrap_or("none");
        let target = || -> Result<IpAddress, ModuleError> {
            get(TARGET)
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| ModuleError::InvalidInput(format!("{TARGET} is not an address")))
        };
        let mut plan = PolicyPlan::new(Mode::Enforce);
        let mut extra = vec![];
        let every_node = behaviour == "every-node";
        for pod in policy
            .selected
            .iter()
            .filter(|p| (every_node || p.node == ctx.node) && !p.host_network)
            .flat_map(|p| p.ips.iter().copied())
        {
            plan.isolate(PolicyDirection::Ingress, pod);
            plan.allow(
                "ingress/all",
                None,
                PolicyDirection::Ingress,
                pod,
                everything(pod.family()),
                None,
            );
        }
        let anywhere: NftValue = "0.0.0.0/0".parse::<IpCidr>().unwrap().into();
        match behaviour {
            "none" | "every-node" => {}
            "open-target" => extra.push(element(
                "ingress-allow-all4",
                vec![target()?.into(), anywhere],
                None,
            )),
            "isolate-target" => {
                extra.push(element("ingress-isolated4", vec![target()?.into()], None))
            }
            "prefix-pod" => extra.push(element(
                "ingress-allow-all4",
                vec!["10.0.0.0/8".parse::<IpCidr>().unwrap().into(), anywhere],
                None,
            )),
            "other-table" => extra.push(element(
                "service-ips",
                vec![
                    "8.8.8.8".parse::<IpAddress>().unwrap().into(),
                    Protocol::Udp.into(),
                    53u16.into(),
                ],
                Some(NftMapValue::Data(vec![NftValue::Number(1)])),
            )),
            other => {
                return Err(ModuleError::InvalidInput(format!(
                    "unknown behaviour {other:?}"
                )));
            }
        }
        let mut f = plan.build();
        f.items.extend(extra);
        Ok(f)
    }
}

switchyard_sdk::export_network_policy!(Hostile);
