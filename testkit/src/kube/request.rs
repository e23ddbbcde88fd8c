//! Reading a request as the API server does: which collection, namespace, object and
//! subresource its path names, its query parameters, and label and field selectors.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// What one request asked for, from its path.
#[derive(Debug, Clone)]
pub struct Route {
    /// The collection: `api/v1/pods`, `apis/webaccel.dev/v1alpha1/browserpools`.
    pub coll: String,
    /// The last segment of the collection (`pods`), for counting.
    pub resource: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// The route of `path`, if it is an API path.
pub fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.first() {
        Some(&"api") if segs.len() >= 3 => (format!("api/{}", segs[1]), &segs[2..]),
        Some(&"apis") if segs.len() >= 4 => (format!("apis/{}/{}", segs[1], segs[2]), &segs[3..]),
        _ => return None,
    };
    let (ns, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    let resource = (*rest.first()?).to_owned();
    Some(Route {
        coll: format!("{prefix}/{resource}"),
        resource,
        ns,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: (rest.len() > 2).then(|| rest[2..].join("/")),
    })
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query parameters.
pub fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated, against an object's labels.
pub fn labels_match(selector: &str, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

/// The field selectors served (as for custom resources): `metadata.name`, `metadata.namespace`.
const FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

/// Why a field selector is refused (the API server's 400), if it is.
pub fn bad_field_selector(selector: &str) -> Option<String> {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .find_map(|term| {
            let field = term
                .split_once("!=")
                .or_else(|| term.split_once('='))
                .map_or(term, |(k, _)| k.trim_end_matches('='));
            (!FIELDS.contains(&field.trim()))
                .then(|| format!("\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""))
        })
}

/// `metadata.name=x`, `metadata.namespace!=y`, comma-separated, against an object.
pub fn fields_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v, equal) = match term.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, true),
                None => return true,
            },
        };
        let actual = match k.trim() {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => return true,
        };
        (actual == Some(v.trim())) == equal
    })
}

/// A `Status` body, as the API server answers an error.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

pub fn metadata_only(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

/// The kind of a list of `coll`'s objects, from one of them or from the collection.
pub fn list_kind(coll: &str, sample: Option<&Value>) -> String {
    if let Some(k) = sample.and_then(|o| o["kind"].as_str()) {
        return format!("{k}List");
    }
    let res = coll.rsplit('/').next().unwrap_or("");
    match res {
        "pods" => "PodList",
        "secrets" => "SecretList",
        "services" => "ServiceList",
        "poddisruptionbudgets" => "PodDisruptionBudgetList",
        "browserpools" => "BrowserPoolList",
        "modeldeployments" => "ModelDeploymentList",
        "leases" => "LeaseList",
        "events" => "EventList",
        _ => "List",
    }
    .to_owned()
}

pub fn api_version_of(coll: &str) -> String {
    let parts: Vec<&str> = coll.split('/').collect();
    match parts.as_slice() {
        ["api", v, _] => (*v).to_owned(),
        ["apis", g, v, _] => format!("{g}/{v}"),
        _ => "v1".to_owned(),
    }
}

/// `(collection, namespace, name)` of an object, from its apiVersion, kind and metadata.
pub fn key_of(o: &Value) -> Option<(String, String, String)> {
    let api_version = o["apiVersion"].as_str()?;
    let kind = o["kind"].as_str()?;
    let resource = match kind {
        "Pod" => "pods",
        "Secret" => "secrets",
        "Service" => "services",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        "BrowserPool" => "browserpools",
        "ModelDeployment" => "modeldeployments",
        "Lease" => "leases",
        "Event" => "events",
        _ => return None,
    };
    let prefix = if api_version.contains('/') {
        format!("apis/{api_version}")
    } else {
        format!("api/{api_version}")
    };
    Some((
        format!("{prefix}/{resource}"),
        o["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
        o["metadata"]["name"].as_str()?.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_behave_like_the_api_server() {
        let obj =
            json!({"metadata": {"name": "p", "namespace": "ml", "labels": {"a": "1", "b": "2"}}});
        assert!(labels_match("a=1,b", &obj));
        assert!(labels_match("a==1", &obj));
        assert!(!labels_match("a!=1", &obj));
        assert!(labels_match("!c", &obj));
        assert!(fields_match("metadata.name=p,metadata.namespace==ml", &obj));
        assert!(!fields_match("metadata.name!=p", &obj));
        assert!(bad_field_selector("metadata.name=p").is_none());
        assert!(bad_field_selector("spec.nodeName=n").is_some());
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
        let r = route("/apis/webaccel.dev/v1alpha1/namespaces/ml/browserpools/web/status").unwrap();
        assert_eq!(
            (
                r.coll.as_str(),
                r.ns.as_deref(),
                r.name.as_deref(),
                r.sub.as_deref()
            ),
            (
                "apis/webaccel.dev/v1alpha1/browserpools",
                Some("ml"),
                Some("web"),
                Some("status")
            )
        );
    }
}
