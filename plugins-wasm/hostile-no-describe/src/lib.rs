//! A component with the service-proxy's `render-service` and no `describe()`:
//! the host must refuse to bind it, with a message that says so.

// Generated ABI glue.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../sdk/wit",
    inline: "
        package switchyard-test:no-describe;
        world no-describe {
            use switchyard:plugin/types@0.1.0.{node-context, service, endpoint, plan-fragment, module-error};
            export render-service: func(context: node-context, service: service, endpoints: list<endpoint>, config: string) -> result<plan-fragment, module-error>;
        }
    ",
    world: "switchyard-test:no-describe/no-describe",
    generate_all,
});

struct NoDescribe;

impl Guest for NoDescribe {
    fn render_service(
        _c: NodeContext,
        _s: Service,
        _e: Vec<Endpoint>,
        _config: String,
    ) -> Result<PlanFragment, ModuleError> {
        Ok(PlanFragment { items: vec![] })
    }
}

export!(NoDescribe);
