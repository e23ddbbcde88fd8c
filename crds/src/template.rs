//! What a pool's browsers are built from, as a short hash: a browser whose hash differs
//! from its pool's is out of date and is rolled. Size and policies (replicas,
//! autoscaling, healing, recycling) are not part of it.

use crate::v1alpha1::BrowserPoolSpec;
use sha2::{Digest, Sha256};

/// The hash of `spec`'s browser-shaping fields and the token Secret the browsers read
/// (`token_secret`: empty where there is none, as in local mode). Ten hex digits.
pub fn template_hash(spec: &BrowserPoolSpec, token_secret: &str) -> String {
    let shaping = serde_json::json!([
        spec.browser,
        spec.image,
        spec.backends,
        spec.max_in_flight_per_browser,
        spec.gpu,
        spec.template,
        spec.metrics,
        token_secret,
    ]);
    let digest = Sha256::digest(shaping.to_string().as_bytes());
    hex::encode(&digest[..5])
}
