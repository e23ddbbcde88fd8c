//! How the operator and the gateway find and reach a pool's agents on Kubernetes, in one
//! place so the two cannot disagree: the labels that select a pool's objects, the token
//! Secret (its name and how its token is read), the agent's port, the URL of a pod's
//! agent, and when a pod counts as ready.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt as _;

use crate::labels;
use crate::v1alpha1::BrowserPool;

/// The port the agent listens on in every browser pod.
pub const AGENT_PORT: u16 = 8700;

/// The data key of the token in a pool's token Secret.
pub const TOKEN_KEY: &str = "token";

/// Labels every object of the pool carries, and the pods' selector.
pub fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::POOL.to_owned(), pool.to_owned()),
    ])
}

/// `key=value,...` form of [`selector_labels`], for list calls and `status.selector`.
pub fn selector_string(pool: &str) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Secret holding the agents' bearer token of `pool`: `spec.tokenSecretName`, else the
/// one the operator creates, `<pool>-agent-token`.
pub fn token_secret_name(pool: &BrowserPool) -> String {
    pool.spec
        .token_secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-agent-token", pool.name_any()))
}

/// Whether the operator creates the token Secret (it does unless the user named one).
pub fn owns_token_secret(pool: &BrowserPool) -> bool {
    pool.spec.token_secret_name.is_none()
}

/// The token in a token Secret (key `token` of `data`, else of `stringData`, surrounding
/// whitespace dropped, as the agent reads its file), if there is a non-empty one.
pub fn token_in(secret: &Secret) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .and_then(|v| String::from_utf8(v.0.clone()).ok());
    let token = from_data.or_else(|| {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .cloned()
    })?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The agent of the pod with IP `ip`: `http://10.0.0.7:8700`, `http://[fd00::7]:8700`.
pub fn agent_url(ip: &str) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{AGENT_PORT}")
    } else {
        format!("http://{ip}:{AGENT_PORT}")
    }
}

/// The path of the agent of pod `pod` in `ns` through the API server's pod proxy.
pub fn agent_proxy_path(ns: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{pod}:{AGENT_PORT}/proxy")
}

/// The pod's `Ready` condition is `True`. (A pod is Running long before it is Ready: the
/// kubelet sets Ready once the agent's readiness probe passes.)
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls_bracket_ipv6_addresses() {
        assert_eq!(agent_url("10.0.0.7"), "http://10.0.0.7:8700");
        assert_eq!(agent_url("fd00::7"), "http://[fd00::7]:8700");
        assert_eq!(
            agent_proxy_path("ml", "web-a"),
            "/api/v1/namespaces/ml/pods/web-a:8700/proxy"
        );
    }

    #[test]
    fn the_token_is_read_from_data_else_string_data_and_trimmed() {
        let secret = |data: Option<&str>, string_data: Option<&str>| Secret {
            data: data.map(|t| {
                BTreeMap::from([(
                    TOKEN_KEY.to_owned(),
                    k8s_openapi::ByteString(t.as_bytes().to_vec()),
                )])
            }),
            string_data: string_data
                .map(|t| BTreeMap::from([(TOKEN_KEY.to_owned(), t.to_owned())])),
            ..Secret::default()
        };
        assert_eq!(
            token_in(&secret(Some("abc\n"), None)).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_in(&secret(None, Some(" xyz "))).as_deref(),
            Some("xyz")
        );
        assert_eq!(token_in(&secret(Some("  "), Some("xyz"))), None);
        assert_eq!(token_in(&secret(None, None)), None);
    }
}
