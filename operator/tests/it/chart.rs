//! The Helm chart as helm renders it (the real helm, from `tools/`): `helm lint` passes,
//! and every pod it runs fits what its program and the images need: the image the
//! image build tags, arguments the binary accepts, probes on ports and paths it serves,
//! and the restricted security context the images are built for (non-root 65532, read-only
//! root, a writable /tmp).

use std::path::PathBuf;
use std::process::Command;

use clap::Parser as _;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm(args: &[&str]) -> String {
    let bin = repo().join("tools/bin/helm");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup.sh",
        bin.display()
    );
    let out = Command::new(bin)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rendered(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "wa",
        "charts/webaccel",
        "--namespace",
        "webaccel",
    ];
    args.extend_from_slice(extra);
    let text = helm(&args);
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|d| serde_yaml_ng::with::singleton_map_recursive::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn app_version() -> String {
    let chart = std::fs::read_to_string(repo().join("charts/webaccel/Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// The image names `scripts/images.sh` tags.
fn built_images() -> Vec<String> {
    let out = Command::new(repo().join("scripts/images.sh"))
        .arg("names")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The binaries the control-plane image carries (staged by `scripts/images.sh`).
fn control_plane_binaries() -> String {
    std::fs::read_to_string(repo().join("scripts/images.sh"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("control_plane_bins="))
        .unwrap()
        .to_owned()
}

#[test]
fn the_chart_lints_clean() {
    let out = helm(&["lint", "charts/webaccel"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn every_pod_the_chart_runs_fits_its_program_and_image() {
    let docs = rendered(&[]);
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2, "the operator and the gateway");
    let version = app_version();
    let images = built_images();
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let sec = &pod["securityContext"];
        assert_eq!(sec["runAsNonRoot"], true, "{name}");
        assert_eq!(sec["runAsUser"], 65532, "{name}: the images' non-root user");
        assert_eq!(sec["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        let c = &pod["containers"][0];
        let image = c["image"].as_str().unwrap();
        assert_eq!(
            image,
            format!("ghcr.io/webaccel/webaccel-operator:{version}"),
            "{name}"
        );
        assert!(
            images.iter().any(|i| i == image),
            "{name}: {image} is not built by scripts/images.sh: {images:?}"
        );
        let csec = &c["securityContext"];
        assert_eq!(csec["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(csec["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            csec["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        // A read-only root needs a writable /tmp (spools, temp files).
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(
            mounts.iter().any(|m| m["mountPath"] == "/tmp"),
            "{name}: no /tmp"
        );
        // Probes point at ports the container declares.
        let ports: Vec<&str> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for probe in ["livenessProbe", "readinessProbe"] {
            let port = c[probe]["httpGet"]["port"].as_str().unwrap();
            assert!(
                ports.contains(&port),
                "{name} {probe}: port {port} not declared"
            );
        }
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        if c["name"] == "gateway" {
            // The gateway parses exactly these arguments, and serves its probes on admin.
            let mut argv = vec!["webaccel-gateway".to_owned()];
            argv.extend(args);
            let parsed = webaccel_gateway::GatewayArgs::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(parsed.kubernetes);
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            let admin = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "admin")
                .unwrap();
            assert_eq!(admin["containerPort"], i64::from(parsed.admin.port()));
            assert!(
                c["command"][0]
                    .as_str()
                    .unwrap()
                    .ends_with("/webaccel-gateway")
            );
            assert!(
                control_plane_binaries().contains("webaccel-gateway"),
                "the image carries the gateway"
            );
        } else {
            // The operator accepts every argument (clap stops at the first it does not).
            let out = Command::new(env!("CARGO_BIN_EXE_webaccel-operator"))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        }
    }
}

/// The environment a container gets, by name.
fn env_of(c: &Value) -> std::collections::BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect()
}

/// Chart values reach the binary they describe: the gateway's spool limit is its
/// emptyDir's (the spool stays below the volume, so a ClickHouse outage never gets the
/// pod evicted), the log format and extra variables reach both containers, and every
/// `WEBACCEL_*` variable the chart sets is one its binary reads (`--help` names it).
#[test]
fn chart_values_reach_the_binaries() {
    let docs = rendered(&[
        "--set",
        "gateway.spoolSizeLimit=300Mi",
        "--set",
        "logFormat=text",
        "--set",
        "gateway.extraEnv[0].name=EXTRA_GATEWAY",
        "--set",
        "gateway.extraEnv[0].value=g",
        "--set",
        "extraEnv[0].name=EXTRA_OPERATOR",
        "--set",
        "extraEnv[0].value=o",
    ]);
    let mut seen = 0;
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let env = env_of(c);
        assert_eq!(env["WEBACCEL_LOG_FORMAT"], "text");
        assert_eq!(env["WEBACCEL_LOG_COLOR"], "never");
        let help = if c["name"] == "gateway" {
            assert_eq!(env["EXTRA_GATEWAY"], "g");
            assert!(!env.contains_key("EXTRA_OPERATOR"));
            let mut argv = vec!["webaccel-gateway".to_owned()];
            argv.extend(
                c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned()),
            );
            let parsed = webaccel_gateway::GatewayArgs::try_parse_from(&argv).unwrap();
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "tmp")
                .unwrap();
            let size = webaccel_crds::v1alpha1::quantity_bytes(
                volume["emptyDir"]["sizeLimit"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(size, 300 << 20);
            assert_eq!(parsed.spool_size_limit, size);
            assert!(parsed.spool_max_bytes() < size);
            use clap::CommandFactory as _;
            webaccel_gateway::GatewayArgs::command()
                .render_long_help()
                .to_string()
        } else {
            assert_eq!(env["EXTRA_OPERATOR"], "o");
            let out = Command::new(env!("CARGO_BIN_EXE_webaccel-operator"))
                .arg("--help")
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        for name in env.keys().filter(|n| n.starts_with("WEBACCEL_")) {
            assert!(
                help.contains(&format!("[env: {name}")),
                "{}: sets {name}, which it does not read",
                c["name"]
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 2);
}
