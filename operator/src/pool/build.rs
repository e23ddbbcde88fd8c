//! Pure builders: the objects a `BrowserPool` owns (browser pods, headless Service,
//! PodDisruptionBudget, token Secret), built from the spec alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities as LinuxCapabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use webaccel_crds::agent as command;
use webaccel_crds::labels;
use webaccel_crds::pods::{self, selector_labels, token_secret_name};
use webaccel_crds::v1alpha1::{BrowserPool, GpuVendor};
use webaccel_logs::LogFormat;

/// The port the agent listens on in every browser pod, as a container port.
const AGENT_PORT: i32 = pods::AGENT_PORT as i32;
/// Where the token Secret is mounted.
const TOKEN_DIR: &str = "/var/run/webaccel/token";
/// The agent drains for up to 30 s on SIGTERM; the kubelet must wait longer than that.
const TERMINATION_GRACE_SECONDS: i64 = 45;

fn owner(pool: &BrowserPool) -> Vec<OwnerReference> {
    pool.controller_owner_ref(&()).into_iter().collect()
}

fn meta(pool: &BrowserPool, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pool.namespace(),
        labels: Some(labels),
        owner_references: Some(owner(pool)),
        ..ObjectMeta::default()
    }
}

/// A short hash of everything in the spec that shapes a pod. Pods carry it as a label; a pod
/// whose hash differs from the pool's is rolled. Replicas and autoscaling are left out: they
/// size the pool, they do not change a pod.
pub fn template_hash(pool: &BrowserPool) -> String {
    webaccel_crds::template::template_hash(&pool.spec, &token_secret_name(pool))
}

fn gpu_node_label(vendor: GpuVendor) -> (&'static str, &'static str) {
    match vendor {
        // Set by NVIDIA's GPU feature discovery / the GPU operator.
        GpuVendor::Nvidia => ("nvidia.com/gpu.present", "true"),
        GpuVendor::Amd => ("amd.com/gpu.present", "true"),
        GpuVendor::Intel => ("intel.feature.node.kubernetes.io/gpu", "true"),
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn agent_env(pool: &BrowserPool, log_format: LogFormat) -> Vec<EnvVar> {
    let mut vars = vec![
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        // The root filesystem is read-only; Chromium writes its profile and caches under HOME.
        env("HOME", "/tmp"),
        // As the operator logs (the chart's `logFormat`); colour follows the output, which
        // in a pod is no terminal.
        env("WEBACCEL_LOG_FORMAT", log_format.as_str()),
    ];
    // A URL with credentials comes from a Secret (the plain one is on the command line).
    if let Some(r) = pool
        .spec
        .metrics
        .as_ref()
        .and_then(|m| m.url_secret_ref.as_ref())
    {
        vars.push(EnvVar {
            name: "WEBACCEL_CLICKHOUSE_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    vars
}

fn resources(pool: &BrowserPool) -> Option<ResourceRequirements> {
    let mut r = pool
        .spec
        .template
        .as_ref()
        .and_then(|t| t.resources.clone());
    if let Some(gpu) = &pool.spec.gpu {
        let r = r.get_or_insert_with(ResourceRequirements::default);
        // Extended resources go in limits (requests default to them).
        r.limits.get_or_insert_with(BTreeMap::new).insert(
            gpu.vendor.resource_name().into(),
            Quantity(gpu.count.to_string()),
        );
    }
    r
}

/// One browser pod called `name`, built from the pool's current spec.
pub fn pod(pool: &BrowserPool, name: &str, hash: &str, log_format: LogFormat) -> Pod {
    let spec = &pool.spec;
    let overrides = spec.template.clone().unwrap_or_default();
    let pool_name = pool.name_any();
    let mut pod_labels = selector_labels(&pool_name);
    pod_labels.insert(labels::TEMPLATE_HASH.into(), hash.into());

    // The same command line local mode runs (the engine builds both); Kubernetes puts the
    // pod's own name in for $(POD_NAME).
    let args = command::agent_args(
        spec,
        &command::AgentSite {
            listen: format!("0.0.0.0:{AGENT_PORT}"),
            token_file: format!("{TOKEN_DIR}/token"),
            pool: pool_name.clone(),
            pod_name: "$(POD_NAME)".into(),
            cache_dir: "/tmp/webaccel-cache".into(),
            browser_binary: spec.browser.default_binary().into(),
        },
    );

    let mut node_selector = overrides.node_selector.clone();
    let mut tolerations = overrides.tolerations.clone();
    if let Some(gpu) = &spec.gpu {
        let (k, v) = gpu_node_label(gpu.vendor);
        node_selector.entry(k.into()).or_insert_with(|| v.into());
        tolerations.push(Toleration {
            key: Some(gpu.vendor.resource_name().into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }

    let mut volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        // Chromium's renderers share memory through /dev/shm; the container default (64 MiB)
        // is too small for model weights.
        Volume {
            name: "dshm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Gi".into())),
            }),
            ..Volume::default()
        },
        Volume {
            name: "token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(token_secret_name(pool)),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(overrides.volumes.iter().cloned());
    let mut mounts = vec![
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    mounts.extend(overrides.volume_mounts.iter().cloned());

    let container = Container {
        name: "agent".into(),
        image: Some(spec.image.clone()),
        args: Some(args),
        env: Some(agent_env(pool, log_format)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: AGENT_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: resources(pool),
        // Browser start plus runtime start can take tens of seconds on a busy node.
        startup_probe: Some(http_probe("/healthz", 2, 60)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(LinuxCapabilities {
                drop: Some(vec!["ALL".into()]),
                ..LinuxCapabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    Pod {
        metadata: meta(pool, name.to_owned(), pod_labels),
        spec: Some(PodSpec {
            containers: vec![container],
            // Stable DNS per browser through the headless Service: <pod>.<pool>.<ns>.svc.
            hostname: Some(name.to_owned()),
            subdomain: Some(pool_name.clone()),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            service_account_name: overrides.service_account_name.clone(),
            priority_class_name: overrides.priority_class_name.clone(),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity: overrides.affinity.clone(),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                fs_group: Some(1000),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// Headless Service: DNS per browser and the endpoints the gateway discovers. Only ready
/// browsers are published.
pub fn service(pool: &BrowserPool) -> Service {
    let name = pool.name_any();
    Service {
        metadata: meta(pool, name.clone(), selector_labels(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: AGENT_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// At most one browser down through voluntary disruptions (node drains), matching the
/// operator's own one-at-a-time rolls.
pub fn pdb(pool: &BrowserPool) -> PodDisruptionBudget {
    let name = pool.name_any();
    PodDisruptionBudget {
        metadata: meta(pool, name.clone(), selector_labels(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// The agents' bearer token, when the user gave none.
pub fn token_secret(pool: &BrowserPool, token: &str) -> Secret {
    Secret {
        metadata: meta(
            pool,
            token_secret_name(pool),
            selector_labels(&pool.name_any()),
        ),
        string_data: Some(BTreeMap::from([("token".to_owned(), token.to_owned())])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
