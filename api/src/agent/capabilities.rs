//! What a browser can run, as its page detected it (`/v1/capabilities`): the WebGPU
//! adapter (a software one such as SwiftShader or lavapipe reported as such), WebNN per
//! device type or the exact reason it is unavailable, and WebAssembly SIMD and threads.
//! The labels derived from it ([`Capabilities::backends`], [`Capabilities::adapter_label`])
//! are computed here once, so the pool status, the metric rows and routing agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub user_agent: String,
    pub webgpu: WebGpuSupport,
    /// By WebNN device type: `cpu`, `gpu`, `npu`.
    pub webnn: BTreeMap<String, WebNnSupport>,
    pub wasm: WasmSupport,
    /// The onnxruntime-web version the page runs.
    #[serde(default)]
    pub ort_version: Option<String>,
    /// How the page's runtime started (onnxruntime-web's wasm compiled and self-checked).
    #[serde(default)]
    pub runtime: Option<RuntimeStart>,
    /// How the page runs requests: onnxruntime-web instances and wasm threads each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_workers: Option<PageWorkers>,
    /// Added by the agent: the browser's version, process and state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<BrowserSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebGpuSupport {
    pub available: bool,
    /// Why not, when unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<Adapter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adapter {
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub description: String,
    pub is_fallback_adapter: bool,
    /// `software` (a CPU rasteriser, or a fallback adapter) or `hardware`.
    pub kind: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub max_buffer_size: Option<f64>,
    #[serde(default)]
    pub max_storage_buffer_binding_size: Option<f64>,
}

impl Adapter {
    pub fn is_software(&self) -> bool {
        self.is_fallback_adapter || self.kind == "software"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebNnSupport {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WasmSupport {
    pub simd: bool,
    pub threads: bool,
    pub cross_origin_isolated: bool,
    #[serde(default)]
    pub hardware_concurrency: u32,
}

/// `--page-workers` as the page applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageWorkers {
    /// onnxruntime-web instances (Web Workers; 1: the page's own thread).
    pub workers: u32,
    /// WebAssembly threads of each instance.
    pub threads_per_worker: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStart {
    pub start_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrowserSummary {
    pub version: String,
    pub pid: Option<u32>,
    pub state: super::BrowserState,
}

impl Capabilities {
    /// A report as a page with exactly `backends` would send it, with a software WebGPU
    /// adapter from `vendor` and `architecture` when WebGPU is among them: for fakes
    /// standing in for agents in tests and benchmarks.
    pub fn synthetic(backends: &[Backend], vendor: &str, architecture: &str) -> Self {
        let webgpu = backends.contains(&Backend::Webgpu);
        Self {
            user_agent: "synthetic".into(),
            webgpu: WebGpuSupport {
                available: webgpu,
                reason: (!webgpu).then(|| "not in this synthetic report".into()),
                adapter: webgpu.then(|| Adapter {
                    vendor: vendor.into(),
                    architecture: architecture.into(),
                    device: String::new(),
                    description: String::new(),
                    is_fallback_adapter: true,
                    kind: "software".into(),
                    features: Vec::new(),
                    max_buffer_size: None,
                    max_storage_buffer_binding_size: None,
                }),
            },
            webnn: ["cpu", "gpu", "npu"]
                .into_iter()
                .map(|d| {
                    let available = backends.contains(&Backend::Webnn);
                    (
                        d.to_owned(),
                        WebNnSupport {
                            available,
                            reason: (!available).then(|| "not in this synthetic report".into()),
                        },
                    )
                })
                .collect(),
            wasm: WasmSupport {
                simd: true,
                threads: true,
                cross_origin_isolated: true,
                hardware_concurrency: 2,
            },
            ort_version: None,
            page_workers: None,
            runtime: Some(RuntimeStart {
                start_ms: Some(0.0),
                error: (!backends.contains(&Backend::Wasm)).then(|| "no wasm".into()),
            }),
            browser: None,
        }
    }

    /// The backends this browser can run: WebGPU when an adapter was found, WebNN when any
    /// device type had a context, and WebAssembly (onnxruntime-web's baseline) when the
    /// page's runtime started.
    pub fn backends(&self) -> Vec<Backend> {
        let mut out = Vec::new();
        if self.webgpu.available {
            out.push(Backend::Webgpu);
        }
        if self.webnn.values().any(|d| d.available) {
            out.push(Backend::Webnn);
        }
        if self.runtime.as_ref().is_none_or(|r| r.error.is_none()) {
            out.push(Backend::Wasm);
        }
        out
    }

    /// The WebGPU adapter as one label: `vendor architecture description (kind)`, or
    /// `unnamed (kind)` when the browser gives no names (Firefox's lavapipe does not).
    pub fn adapter_label(&self) -> Option<String> {
        let a = self.webgpu.adapter.as_ref()?;
        let name = [&a.vendor, &a.architecture, &a.description]
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let kind = if a.is_software() {
            "software"
        } else {
            "hardware"
        };
        Some(if name.is_empty() {
            format!("unnamed ({kind})")
        } else {
            format!("{name} ({kind})")
        })
    }

    /// `wasm,webgpu(software)` style, for a pool's Backends column.
    pub fn backend_summary(&self) -> Vec<String> {
        let software = self
            .webgpu
            .adapter
            .as_ref()
            .is_some_and(Adapter::is_software);
        self.backends()
            .into_iter()
            .map(|b| match b {
                Backend::Webgpu if software => "webgpu(software)".to_owned(),
                b => b.as_str().to_owned(),
            })
            .collect()
    }
}
