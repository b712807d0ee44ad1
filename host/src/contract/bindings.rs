//! Host bindings generated from `sdk/wit`, the files the SDK generates the
//! guest side from. The shared interfaces are generated once (`imports`) and
//! every role world reuses them, so the host sees one set of types.

pub mod imports {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        inline: "
            package switchyard:host;
            world imports {
                import switchyard:plugin/types@0.1.0;
                import switchyard:plugin/cni-types@0.1.0;
                import switchyard:plugin/log@0.1.0;
                import switchyard:plugin/probes@0.1.0;
                import switchyard:plugin/ipam@0.1.0;
                import switchyard:plugin/links@0.1.0;
            }
        ",
        world: "switchyard:host/imports",
        imports: { default: trappable },
        additional_derives: [PartialEq],
    });
}

use imports::switchyard::plugin as shared;

pub mod service_proxy {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "switchyard:plugin/service-proxy@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": super::shared::types,
            "switchyard:plugin/log@0.1.0": super::shared::log,
            "switchyard:plugin/probes@0.1.0": super::shared::probes,
        },
        imports: { default: trappable },
    });
}

pub mod scheduler {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "switchyard:plugin/scheduler@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": super::shared::types,
            "switchyard:plugin/log@0.1.0": super::shared::log,
            "switchyard:plugin/probes@0.1.0": super::shared::probes,
        },
        imports: { default: trappable },
        additional_derives: [PartialEq],
    });
}

pub mod network_policy {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "switchyard:plugin/network-policy@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": super::shared::types,
            "switchyard:plugin/log@0.1.0": super::shared::log,
        },
        imports: { default: trappable },
    });
}

pub mod cni {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "switchyard:plugin/cni@0.1.0",
        with: {
            "switchyard:plugin/types@0.1.0": super::shared::types,
            "switchyard:plugin/cni-types@0.1.0": super::shared::cni_types,
            "switchyard:plugin/log@0.1.0": super::shared::log,
            "switchyard:plugin/ipam@0.1.0": super::shared::ipam,
            "switchyard:plugin/links@0.1.0": super::shared::links,
        },
        imports: { default: trappable },
    });
}
