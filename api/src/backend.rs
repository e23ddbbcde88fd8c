//! Execution backends a model can run on inside a browser.

use serde::{Deserialize, Serialize};

/// Which onnxruntime-web execution provider runs a model. `Auto` asks the agent to
/// measure the available ones on the loaded model and keep the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Auto,
    Webgpu,
    Webnn,
    Wasm,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Webgpu => "webgpu",
            Self::Webnn => "webnn",
            Self::Wasm => "wasm",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "webgpu" => Ok(Self::Webgpu),
            "webnn" => Ok(Self::Webnn),
            "wasm" => Ok(Self::Wasm),
            other => Err(format!(
                "unknown backend '{other}' (expected auto, webgpu, webnn or wasm)"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The WebNN device type a WebNN context is created for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum WebNnDevice {
    #[default]
    Cpu,
    Gpu,
    Npu,
}

impl std::str::FromStr for WebNnDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "npu" => Ok(Self::Npu),
            other => Err(format!(
                "unknown WebNN device '{other}' (expected cpu, gpu or npu)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_backend() {
        for b in [
            Backend::Auto,
            Backend::Webgpu,
            Backend::Webnn,
            Backend::Wasm,
        ] {
            assert_eq!(b.as_str().parse::<Backend>(), Ok(b));
        }
        assert!(
            "cuda"
                .parse::<Backend>()
                .unwrap_err()
                .contains("expected auto")
        );
    }
}
