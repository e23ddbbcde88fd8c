//! The gateway's RBAC rules, from the chart's `gateway-rbac.yaml`, checked on every request
//! the mocked API server takes (403 to any other, as a real API server would).

use std::sync::OnceLock;

#[path = "../../../tests/chart_rbac.rs"]
mod chart_rbac;

pub use chart_rbac::{Rule, attributes};

/// Every rule of the gateway's (Cluster)Role; none names objects.
pub fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules = chart_rbac::parse("gateway-rbac.yaml");
        assert!(
            rules.iter().all(|r| !r.names_objects),
            "the gateway's rules name no objects"
        );
        rules
    })
}

/// Every (group, resource, verb) the gateway's rules grant.
pub fn granted() -> std::collections::BTreeSet<(String, String, String)> {
    chart_rbac::granted(rules())
}

/// Why the gateway's RBAC refuses the request, if it does.
pub fn refusal(method: &str, path: &str, query: &str, namespace: Option<&str>) -> Option<String> {
    chart_rbac::refusal(rules(), method, path, query, namespace)
}
