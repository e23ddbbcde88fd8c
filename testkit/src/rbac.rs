//! The chart's RBAC rules, read from a template under `charts/webaccel/templates/`, and
//! whether a request the code made is one of them. The mocked API servers (the operator's
//! ordered scenarios, [`crate::kube::ApiServer`]) run it on every request, so a call the
//! chart does not allow fails the test that makes it.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    /// Whether it is limited to named objects (`resourceNames`).
    pub names_objects: bool,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// Every rule of every Role/ClusterRole in `charts/webaccel/templates/<template>`, with
/// the template lines dropped (the rules themselves are plain YAML).
pub fn parse(template: &str) -> Vec<Rule> {
    let path = crate::fixtures::repo()
        .join("charts/webaccel/templates")
        .join(template)
        .display()
        .to_string();
    let text = std::fs::read_to_string(&path).unwrap();
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
                names_objects: r.get("resourceNames").is_some(),
            });
        }
    }
    assert!(!out.is_empty(), "no RBAC rules found in {path}");
    out
}

/// Every (group, resource, verb) `rules` grant.
pub fn granted(rules: &[Rule]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|r| {
            r.groups.iter().flat_map(move |g| {
                r.resources.iter().flat_map(move |res| {
                    r.verbs
                        .iter()
                        .map(move |v| (g.clone(), res.clone(), v.clone()))
                })
            })
        })
        .collect()
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
        "GET" if query.split('&').any(|p| p == "watch=true") => "watch",
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

/// Why `rules` refuse the request, if they do. `namespace`: the namespace the rules are
/// bound in (a Role), or `None` for a ClusterRole.
pub fn refusal(
    rules: &[Rule],
    method: &str,
    path: &str,
    query: &str,
    namespace: Option<&str>,
) -> Option<String> {
    let (group, resource, verb) = attributes(method, path, query);
    if let Some(ns) = namespace
        && !path.contains(&format!("/namespaces/{ns}/"))
    {
        return Some(format!(
            "{method} {path}: the Role only holds in namespace {ns}"
        ));
    }
    let allowed = rules.iter().any(|r| {
        r.groups.contains(&group) && r.resources.contains(&resource) && r.verbs.contains(&verb)
    });
    (!allowed).then(|| {
        format!(
            "the chart's RBAC does not allow {verb} {resource} in group '{group}' ({method} {path})"
        )
    })
}
