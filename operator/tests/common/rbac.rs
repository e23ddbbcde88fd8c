//! The chart's RBAC rules, read from `charts/webaccel/templates/rbac.yaml`, and the check that
//! a request the operator made is one of them. Every mocked scenario runs it on every request,
//! so a call the chart does not allow fails the test that makes it.

use std::sync::OnceLock;

use serde_json::Value;

#[derive(Debug)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// Every rule of every Role/ClusterRole in the template, with the template lines dropped
/// (the rules themselves are plain YAML).
fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/webaccel/templates/rbac.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = Vec::new();
        for doc in text.split("\n---") {
            let Some(start) = doc.find("\nrules:") else {
                continue;
            };
            let block: String = doc[start..]
                .lines()
                .take_while(|l| !l.starts_with("{{") || l.trim().is_empty())
                .filter(|l| !l.contains("{{"))
                .map(|l| format!("{l}\n"))
                .collect();
            let parsed: Value = serde_yaml_ng::from_str(&block).unwrap();
            for r in parsed["rules"].as_array().unwrap() {
                out.push(Rule {
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    verbs: strings(&r["verbs"]),
                });
            }
        }
        assert!(out.len() >= 8, "too few RBAC rules found: {out:?}");
        out
    })
}

/// (group, resource[/subresource], verb) of a request, as the API server authorizes it.
pub fn attributes(method: &str, path: &str, query: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.first() {
        Some(&"api") => (String::new(), &parts[2..]),
        _ => (parts[1].to_owned(), &parts[3..]),
    };
    let rest = if rest.first() == Some(&"namespaces") {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [r] | [r, _] => (*r).to_owned(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
        [] => String::new(),
    };
    let named = rest.len() >= 2;
    let verb = match method {
        "GET" if query.contains("watch=true") => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PATCH" => "patch",
        "PUT" => "update",
        "DELETE" => "delete",
        other => panic!("unexpected method {other}"),
    };
    (group, resource, verb.to_owned())
}

pub fn assert_allowed(method: &str, path: &str, query: &str) {
    let (group, resource, verb) = attributes(method, path, query);
    let allowed = rules().iter().any(|r| {
        r.groups.contains(&group) && r.resources.contains(&resource) && r.verbs.contains(&verb)
    });
    assert!(
        allowed,
        "the chart's RBAC does not allow {verb} {resource} in group '{group}' ({method} {path})"
    );
}
