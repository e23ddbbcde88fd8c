//! Speech input for an encoder-decoder (Whisper's layout): a WAV file read to mono
//! samples, and Whisper's log-mel front end, with the numbers of the model's
//! `preprocessor_config.json` (Hugging Face's `WhisperFeatureExtractor` fields): the
//! samples padded with zeros or cut to the chunk, a periodic Hann window of `n_fft`
//! every `hop_length` samples over the signal reflect-padded by `n_fft / 2` (the last
//! frame dropped), the power spectrum through Slaney-normalised mel filters on the
//! Slaney mel scale (librosa's defaults, which Whisper's filters are), `log10` of it
//! clamped at 1e-10 and at 8 below its maximum, then `(x + 4) / 4`. Computed in f64,
//! given as f32 `[feature_size, nb_max_frames]`.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::Deserialize;

/// Why audio could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error("the audio is not a WAV file webaccel can read: {0} (send 16-bit or float PCM WAV)")]
    Wav(String),
    #[error(
        "the audio is {got} Hz; this model takes {want} Hz: resample it first (e.g. ffmpeg -i in -ar {want} out.wav)"
    )]
    SampleRate { got: u32, want: u32 },
    #[error("the audio has no samples")]
    Empty,
    #[error("preprocessor_config.json: {0}")]
    Config(String),
}

/// The front end's numbers (`preprocessor_config.json`); absent fields are Whisper's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "whisper_mels")]
    pub feature_size: usize,
    #[serde(default = "whisper_rate")]
    pub sampling_rate: u32,
    #[serde(default = "whisper_hop")]
    pub hop_length: usize,
    #[serde(default = "whisper_fft")]
    pub n_fft: usize,
    /// Seconds per chunk.
    #[serde(default = "whisper_chunk")]
    pub chunk_length: usize,
}

fn whisper_mels() -> usize {
    80
}
fn whisper_rate() -> u32 {
    16_000
}
fn whisper_hop() -> usize {
    160
}
fn whisper_fft() -> usize {
    400
}
fn whisper_chunk() -> usize {
    30
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

/// Whisper's log-mel front end for one set of numbers, its window, filters and FFT made
/// once.
pub struct FrontEnd {
    config: PreprocessorConfig,
    window: Vec<f64>,
    /// `[feature_size][n_fft / 2 + 1]`.
    filters: Vec<Vec<f64>>,
    fft: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for FrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontEnd")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[allow(clippy::cast_precision_loss)]
fn hz_to_mel(f: f64) -> f64 {
    let log_step = 6.4f64.ln() / 27.0;
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() / log_step
    } else {
        f / (200.0 / 3.0)
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let log_step = 6.4f64.ln() / 27.0;
    if m >= 15.0 {
        1000.0 * (log_step * (m - 15.0)).exp()
    } else {
        m * (200.0 / 3.0)
    }
}

impl FrontEnd {
    pub fn new(config: PreprocessorConfig) -> Result<Self, AudioError> {
        let bad = |m: &str| Err(AudioError::Config(m.to_owned()));
        if config.n_fft < 2 || config.hop_length == 0 || config.feature_size == 0 {
            return bad("n_fft, hop_length and feature_size must be positive");
        }
        if config.chunk_length == 0 || config.sampling_rate == 0 {
            return bad("chunk_length and sampling_rate must be positive");
        }
        if config.n_fft / 2 >= config.samples() {
            return bad("the chunk is shorter than half a window");
        }
        #[allow(clippy::cast_precision_loss)]
        let window = (0..config.n_fft)
            .map(|i| {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / config.n_fft as f64).cos()
            })
            .collect();
        let filters = mel_filters(&config);
        let fft = FftPlanner::new().plan_fft_forward(config.n_fft);
        Ok(Self {
            config,
            window,
            filters,
            fft,
        })
    }

    pub fn config(&self) -> &PreprocessorConfig {
        &self.config
    }

    /// `[feature_size, frames]` row-major, for `samples` at the model's rate.
    #[allow(clippy::cast_possible_truncation)]
    pub fn features(&self, samples: &[f64]) -> Vec<f32> {
        let c = &self.config;
        let n = c.samples();
        let half = c.n_fft / 2;
        let mut audio = samples[..samples.len().min(n)].to_vec();
        audio.resize(n, 0.0);
        // numpy's reflect padding: the edge sample not repeated.
        let mut padded = Vec::with_capacity(n + 2 * half);
        padded.extend((1..=half).rev().map(|i| audio[i]));
        padded.extend_from_slice(&audio);
        padded.extend((1..=half).map(|i| audio[n - 1 - i]));
        let frames = c.frames();
        let bins = c.n_fft / 2 + 1;
        let mut power = vec![0.0f64; bins * frames];
        let mut buf = vec![Complex::new(0.0, 0.0); c.n_fft];
        for t in 0..frames {
            let start = t * c.hop_length;
            for (k, b) in buf.iter_mut().enumerate() {
                *b = Complex::new(padded[start + k] * self.window[k], 0.0);
            }
            self.fft.process(&mut buf);
            for (f, b) in buf.iter().take(bins).enumerate() {
                power[f * frames + t] = b.norm_sqr();
            }
        }
        let mut log_spec = vec![0.0f64; c.feature_size * frames];
        for (m, filter) in self.filters.iter().enumerate() {
            for t in 0..frames {
                let mel: f64 = filter
                    .iter()
                    .enumerate()
                    .map(|(f, w)| w * power[f * frames + t])
                    .sum();
                log_spec[m * frames + t] = mel.max(1e-10).log10();
            }
        }
        let top = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        log_spec
            .iter()
            .map(|&v| ((v.max(top - 8.0) + 4.0) / 4.0) as f32)
            .collect()
    }
}

impl PreprocessorConfig {
    /// Samples per chunk.
    pub fn samples(&self) -> usize {
        self.chunk_length * self.sampling_rate as usize
    }

    /// Feature frames per chunk (the STFT's, less the last).
    pub fn frames(&self) -> usize {
        self.samples() / self.hop_length
    }
}

/// Triangular filters on the Slaney mel scale from 0 Hz to Nyquist, each normalised to
/// unit area (Slaney), `[feature_size][n_fft / 2 + 1]`.
#[allow(clippy::cast_precision_loss)]
fn mel_filters(c: &PreprocessorConfig) -> Vec<Vec<f64>> {
    let bins = c.n_fft / 2 + 1;
    let nyquist = f64::from(c.sampling_rate) / 2.0;
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|i| nyquist * i as f64 / (bins - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let points = c.feature_size + 2;
    let mel_f: Vec<f64> = (0..points)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (points - 1) as f64))
        .collect();
    (0..c.feature_size)
        .map(|m| {
            let (left, center, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
            let norm = 2.0 / (right - left);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - left) / (center - left);
                    let upper = (right - f) / (right - center);
                    lower.min(upper).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

/// A WAV file's samples, the channels averaged, as floats in [-1, 1]; and its rate.
pub fn read_wav(bytes: &[u8]) -> Result<(u32, Vec<f64>), AudioError> {
    let wav = |e: hound::Error| AudioError::Wav(e.to_string());
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(wav)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f64> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.map(f64::from))
            .collect::<Result<_, _>>()
            .map_err(wav)?,
        hound::SampleFormat::Int => {
            let scale = f64::from(1u32 << (spec.bits_per_sample.clamp(1, 32) - 1));
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| f64::from(v) / scale))
                .collect::<Result<_, _>>()
                .map_err(wav)?
        }
    };
    if interleaved.is_empty() {
        return Err(AudioError::Empty);
    }
    #[allow(clippy::cast_precision_loss)]
    let mono = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f64>() / channels as f64)
        .collect();
    Ok((spec.sample_rate, mono))
}

#[cfg(test)]
mod tests;
