//! The generated CRDs: committed YAML is current, the CEL rules compile within their cost
//! budget, and the schema is structural with `/scale` and printer columns. What the rules
//! refuse, with the messages a user sees, is tested through webaccel-crds-validate.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kube::CustomResourceExt;
use kube::core::cel;
use serde_json::{Value, json};
use webaccel_crds::v1alpha1::{BrowserPool, ModelDeployment, crd_files, openapi_v3_schema};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crd_yaml_is_what_the_types_generate() {
    for dir in ["yaml", "../charts/webaccel/crds"] {
        for (name, yaml) in crd_files().unwrap() {
            let path = root().join(dir).join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{} is stale: run `cargo run -p webaccel-crds --bin crdgen`",
                path.display()
            );
        }
    }
}

fn schema_of<K: CustomResourceExt>() -> Value {
    openapi_v3_schema::<K>().unwrap()
}

#[test]
fn every_cel_rule_compiles() {
    for schema in [schema_of::<BrowserPool>(), schema_of::<ModelDeployment>()] {
        let compiled = cel::compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{:?}",
            compiled.compilation_errors()
        );
    }
}

/// Every rule in `schema` with the schema node it sits on, depth first.
fn rules_with_nodes<'a>(
    node: &'a cel::CompiledSchema,
    out: &mut Vec<(String, &'a cel::CompiledSchema)>,
) {
    for v in node.validations.iter().flatten() {
        out.push((v.rule.rule.clone(), node));
    }
    for child in node.properties.values() {
        rules_with_nodes(child, out);
    }
    if let Some(items) = &node.items {
        rules_with_nodes(items, out);
    }
}

#[test]
fn every_cel_rule_stays_within_the_cost_budget() {
    // The estimator has teeth: a nested comprehension over an unbounded list of unbounded
    // strings is over budget, as the API server would say.
    let unbounded = cel::compile_schema(&json!({"type": "array", "items": {"type": "string"}}));
    assert!(!cel::estimate_rule_cost("self.all(x, self.all(y, x == y))", &unbounded).is_empty());

    // BrowserPool has 7 rules (rollout: surge or unavailability), ModelDeployment 17 (two on the root, one-of model, stages
    // or ensemble on the spec, its five text-generation rules and replicas-or-autoscaling,
    // backends, stages, the uri rule of model and of stages' items, ensemble steps and
    // outputs, autoscaling's two bounds); all must be found and checked.
    for (schema, expected) in [
        (schema_of::<BrowserPool>(), 7),
        (schema_of::<ModelDeployment>(), 17),
    ] {
        let compiled = cel::compile_schema(&schema);
        let mut rules = Vec::new();
        rules_with_nodes(&compiled, &mut rules);
        assert_eq!(rules.len(), expected);
        for (rule, node) in rules {
            // Cost only: kube-cel's scope check takes comprehension variables (the `b` of
            // `self.exists(b, ...)`) for unknown names.
            let warnings = cel::estimate_rule_cost(&rule, node);
            assert!(warnings.is_empty(), "{rule}: {warnings:?}");
        }
    }
}

#[test]
fn pool_crd_has_scale_status_and_printer_columns() {
    let crd = serde_json::to_value(BrowserPool::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["bpool"]));
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"],
        json!({"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
               "labelSelectorPath": ".status.selector"})
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Desired", "Ready", "Backends", "Status", "Age"]);
    // Structural: every property has a type, so the API server accepts the CRD (besides
    // int-or-string quantities, which carry x-kubernetes-int-or-string instead).
    fn check(v: &Value, path: &str) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                assert!(
                    p.get("type").is_some()
                        || p.get("x-kubernetes-int-or-string").is_some()
                        || p.get("x-kubernetes-preserve-unknown-fields").is_some(),
                    "{here} has no type"
                );
                check(p, &here);
            }
        }
        if let Some(items) = v.get("items") {
            check(items, &format!("{path}[]"));
        }
    }
    check(&version["schema"]["openAPIV3Schema"], "");
    check(
        &serde_json::to_value(ModelDeployment::crd()).unwrap()["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        "",
    );
}
