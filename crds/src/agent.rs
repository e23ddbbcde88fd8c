//! How a pool's agents run: the agent's command line, built in one place for browser
//! pods and for local processes, so both run identical agents: only where it listens,
//! where its token and cache live and what it is called differ ([`AgentSite`]).

use crate::v1alpha1::BrowserPoolSpec;

/// Where one agent runs.
#[derive(Debug, Clone)]
pub struct AgentSite {
    /// `0.0.0.0:8700` in a pod, a free loopback port locally.
    pub listen: String,
    pub token_file: String,
    pub pool: String,
    /// The browser's name in rows and logs (`$(POD_NAME)` in a pod, where Kubernetes
    /// substitutes the pod's name from the environment).
    pub pod_name: String,
    /// Model files and the metric spool.
    pub cache_dir: String,
    /// The browser binary (a name on PATH or a path).
    pub browser_binary: String,
}

/// The agent's arguments for one browser of a pool with `spec`.
pub fn agent_args(spec: &BrowserPoolSpec, site: &AgentSite) -> Vec<String> {
    let mut args = vec![
        format!("--listen={}", site.listen),
        format!("--token-file={}", site.token_file),
        format!("--browser={}", spec.browser),
        format!("--browser-binary={}", site.browser_binary),
        format!("--max-in-flight={}", spec.max_in_flight_per_browser),
        format!("--pool={}", site.pool),
        format!("--pod-name={}", site.pod_name),
        format!("--cache-dir={}", site.cache_dir),
    ];
    if let Some(w) = spec.page_workers {
        args.push(format!("--page-workers={w}"));
    }
    if let Some(m) = &spec.metrics {
        args.push(format!("--clickhouse-database={}", m.database));
        if let Some(url) = &m.url {
            args.push(format!("--clickhouse-url={url}"));
        }
    }
    if let Some(t) = &spec.template {
        args.extend(t.agent_args.iter().cloned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_carries_the_pool_and_the_site() {
        let spec: BrowserPoolSpec = serde_json::from_value(serde_json::json!({
            "image": "i", "maxInFlightPerBrowser": 12, "pageWorkers": 3,
            "template": {"agentArgs": ["--wasm-threads=2"]}
        }))
        .unwrap();
        let site = AgentSite {
            listen: "127.0.0.1:9000".into(),
            token_file: "/t/token".into(),
            pool: "p".into(),
            pod_name: "p-abc".into(),
            cache_dir: "/c".into(),
            browser_binary: "chromium".into(),
        };
        let args = agent_args(&spec, &site);
        assert_eq!(args[0], "--listen=127.0.0.1:9000");
        assert!(args.contains(&"--max-in-flight=12".to_owned()));
        assert!(args.contains(&"--pod-name=p-abc".to_owned()));
        assert!(args.contains(&"--page-workers=3".to_owned()));
        assert_eq!(args.last().unwrap(), "--wasm-threads=2");
    }
}
