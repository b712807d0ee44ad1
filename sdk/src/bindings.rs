//! Bindings generated from `sdk/wit`, the same files the host generates its
//! side from. The imported interfaces and every type are generated once, here;
//! each world reuses them through `with` so a module sees one set of types.

// The generated code is the canonical ABI glue, which is unsafe by nature;
// nothing hand-written in this crate uses `unsafe`.
#![allow(unsafe_code)]
// Docs of generated items come from the WIT doc comments.
#![allow(missing_docs)]
// The canonical ABI flattens records into many parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "wit",
    inline: "
        package switchyard:sdk;
        world imports {
            import switchyard:plugin/types@0.1.0;
            import switchyard:plugin/cni-types@0.1.0;
            import switchyard:plugin/log@0.1.0;
            import switchyard:plugin/probes@0.1.0;
            import switchyard:plugin/ipam@0.1.0;
            import switchyard:plugin/links@0.1.0;
        }
    ",
    world: "switchyard:sdk/imports",
    generate_all,
    generate_unused_types: true,
    additional_derives: [PartialEq, Eq, Hash],
});

#[cfg(feature = "service-proxy")]
pub mod service_proxy {
    wit_bindgen::generate!({
        path: "wit",
        world: "switchyard:plugin/service-proxy@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": crate::bindings::switchyard::plugin::types,
            "switchyard:plugin/log@0.1.0": crate::bindings::switchyard::plugin::log,
            "switchyard:plugin/probes@0.1.0": crate::bindings::switchyard::plugin::probes,
        },
        pub_export_macro: true,
        export_macro_name: "export_service_proxy",
        default_bindings_module: "switchyard_sdk::service_proxy",
    });
}

#[cfg(feature = "scheduler")]
pub mod scheduler {
    wit_bindgen::generate!({
        path: "wit",
        world: "switchyard:plugin/scheduler@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": crate::bindings::switchyard::plugin::types,
            "switchyard:plugin/log@0.1.0": crate::bindings::switchyard::plugin::log,
            "switchyard:plugin/probes@0.1.0": crate::bindings::switchyard::plugin::probes,
        },
        additional_derives: [PartialEq, Eq, Hash],
        pub_export_macro: true,
        export_macro_name: "export_scheduler",
        default_bindings_module: "switchyard_sdk::scheduler",
    });
}

#[cfg(feature = "network-policy")]
pub mod network_policy {
    wit_bindgen::generate!({
        path: "wit",
        world: "switchyard:plugin/network-policy@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": crate::bindings::switchyard::plugin::types,
            "switchyard:plugin/log@0.1.0": crate::bindings::switchyard::plugin::log,
        },
        pub_export_macro: true,
        export_macro_name: "export_network_policy",
        default_bindings_module: "switchyard_sdk::network_policy",
    });
}

#[cfg(feature = "cni")]
pub mod cni {
    wit_bindgen::generate!({
        path: "wit",
        world: "switchyard:plugin/cni@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": crate::bindings::switchyard::plugin::types,
            "switchyard:plugin/cni-types@0.1.0": crate::bindings::switchyard::plugin::cni_types,
            "switchyard:plugin/log@0.1.0": crate::bindings::switchyard::plugin::log,
            "switchyard:plugin/ipam@0.1.0": crate::bindings::switchyard::plugin::ipam,
            "switchyard:plugin/links@0.1.0": crate::bindings::switchyard::plugin::links,
        },
        pub_export_macro: true,
        export_macro_name: "export_cni",
        default_bindings_module: "switchyard_sdk::cni",
    });
}
