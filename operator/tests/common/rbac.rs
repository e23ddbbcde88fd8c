//! The operator's RBAC rules, from the chart's `rbac.yaml`, checked on every request of
//! every mocked scenario, so a call the chart does not allow fails the test that makes it.

use std::sync::OnceLock;

#[path = "../../../tests/chart_rbac.rs"]
mod chart_rbac;

/// Every rule of every Role/ClusterRole in the operator's template.
fn rules() -> &'static [chart_rbac::Rule] {
    static RULES: OnceLock<Vec<chart_rbac::Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules = chart_rbac::parse("rbac.yaml");
        assert!(rules.len() >= 8, "too few RBAC rules found: {rules:?}");
        rules
    })
}

pub fn assert_allowed(method: &str, path: &str, query: &str) {
    if let Some(why) = chart_rbac::refusal(rules(), method, path, query, None) {
        panic!("{why}");
    }
}
