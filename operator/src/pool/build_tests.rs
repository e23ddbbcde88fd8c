use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use webaccel_crds::v1alpha1::BrowserPool;

use super::*;
use webaccel_crds::pods::{owns_token_secret, selector_string};

fn pool(yaml: &str) -> BrowserPool {
    let mut p: BrowserPool = serde_yaml_ng::from_str(yaml).unwrap();
    p.metadata.uid = Some("uid-1".into());
    p
}

const GPU_POOL: &str = r#"
apiVersion: webaccel.dev/v1alpha1
kind: BrowserPool
metadata: {name: gpu, namespace: ml}
spec:
  browser: chrome
  image: reg/browser:1
  maxInFlightPerBrowser: 16
  gpu: {vendor: nvidia, count: 2}
  template:
    resources: {requests: {cpu: "2"}}
    nodeSelector: {zone: a}
    agentArgs: ["--standby-browser=false"]
  metrics:
    urlSecretRef: {name: ch, key: url}
    database: perf
"#;

fn json_of(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap()
}

#[test]
fn pod_is_owned_labelled_and_runs_the_agent_with_the_pools_settings() {
    let p = pool(GPU_POOL);
    let pod = json_of(&pod(&p, "gpu-abcde", "h1", LogFormat::Json));
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "BrowserPool");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "webaccel-operator", "webaccel.dev/pool": "gpu",
               "webaccel.dev/template-hash": "h1"})
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "reg/browser:1");
    assert_eq!(
        c["args"],
        json!([
            "--listen=0.0.0.0:8700",
            "--token-file=/var/run/webaccel/token/token",
            "--browser=chrome",
            "--browser-binary=google-chrome",
            "--max-in-flight=16",
            "--pool=gpu",
            "--pod-name=$(POD_NAME)",
            "--cache-dir=/tmp/webaccel-cache",
            "--clickhouse-database=perf",
            "--standby-browser=false"
        ])
    );
    let env = c["env"].as_array().unwrap();
    let ch = env
        .iter()
        .find(|e| e["name"] == "WEBACCEL_CLICKHOUSE_URL")
        .unwrap();
    assert_eq!(
        ch["valueFrom"]["secretKeyRef"],
        json!({"name": "ch", "key": "url", "optional": false})
    );
    // $(POD_NAME) in the arguments is substituted from this.
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name")
    );
    // The operator's log format (the chart's `logFormat`) reaches the agents.
    assert!(
        env.iter()
            .any(|e| e["name"] == "WEBACCEL_LOG_FORMAT" && e["value"] == "json"),
        "{env:?}"
    );
}

#[test]
fn gpu_becomes_a_limit_a_node_selector_and_a_toleration() {
    let pod = json_of(&pod(&pool(GPU_POOL), "gpu-abcde", "h1", LogFormat::Text));
    let spec = &pod["spec"];
    assert_eq!(
        spec["containers"][0]["resources"],
        json!({"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "2"}})
    );
    assert_eq!(
        spec["nodeSelector"],
        json!({"zone": "a", "nvidia.com/gpu.present": "true"})
    );
    assert_eq!(
        spec["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
}

#[test]
fn pod_is_locked_down_with_writable_tmp_and_shm_and_probes() {
    let pod = json_of(&pod(&pool(GPU_POOL), "gpu-abcde", "h1", LogFormat::Text));
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/tmp", "/dev/shm", "/var/run/webaccel/token"]);
    assert_eq!(spec["volumes"][1]["emptyDir"]["medium"], "Memory");
    assert_eq!(
        spec["volumes"][2]["secret"]["secretName"],
        "gpu-agent-token"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(spec["subdomain"], "gpu", "DNS through the headless Service");
}

#[test]
fn template_hash_follows_the_pod_shaping_fields_only() {
    let a = pool(GPU_POOL);
    let mut resized = a.clone();
    resized.spec.replicas = 7;
    assert_eq!(template_hash(&a), template_hash(&resized));
    let mut new_image = a.clone();
    new_image.spec.image = "reg/browser:2".into();
    assert_ne!(template_hash(&a), template_hash(&new_image));
    assert_eq!(template_hash(&a).len(), 10);
}

#[test]
fn service_is_headless_and_pdb_allows_one_down() {
    let p = pool(GPU_POOL);
    let svc = serde_json::to_value(service(&p)).unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["selector"]["webaccel.dev/pool"], "gpu");
    let pdb = serde_json::to_value(pdb(&p)).unwrap();
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        selector_string("gpu"),
        "app.kubernetes.io/managed-by=webaccel-operator,webaccel.dev/pool=gpu"
    );
}

#[test]
fn a_given_token_secret_is_used_not_created() {
    let mut p = pool(GPU_POOL);
    assert!(owns_token_secret(&p));
    p.spec.token_secret_name = Some("mine".into());
    assert!(!owns_token_secret(&p));
    let pod = json_of(&pod(&p, "x", "h", LogFormat::Text));
    assert_eq!(pod["spec"]["volumes"][2]["secret"]["secretName"], "mine");
}
