#![allow(clippy::unwrap_used)]

use super::*;

fn whisper_fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/whisper"
    ))
}

#[test]
fn log_mel_features_equal_the_numpy_reference() {
    let dir = whisper_fixture();
    let config: PreprocessorConfig =
        serde_json::from_slice(&std::fs::read(dir.join("preprocessor_config.json")).unwrap())
            .unwrap();
    let front = FrontEnd::new(config).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    for sound in reference["sounds"].as_array().unwrap() {
        let wav = std::fs::read(dir.join(sound["wav"].as_str().unwrap())).unwrap();
        let (rate, samples) = read_wav(&wav).unwrap();
        assert_eq!(rate, 16_000);
        assert_eq!(samples.len() as u64, sound["samples"].as_u64().unwrap());
        let got = front.features(&samples);
        let want: Vec<f64> = sound["features"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-4,
            "{}: features differ by {worst}",
            sound["name"]
        );
    }
}

#[test]
fn whispers_own_numbers_make_its_80_by_3000_features() {
    let front = FrontEnd::new(PreprocessorConfig::default()).unwrap();
    assert_eq!(front.config().frames(), 3000);
    let second: Vec<f64> = (0..16_000)
        .map(|i| (f64::from(i) * 0.05).sin() * 0.1)
        .collect();
    let features = front.features(&second);
    assert_eq!(features.len(), 80 * 3000);
    assert!(features.iter().all(|v| v.is_finite()));
}

#[test]
fn stereo_is_averaged_and_what_is_not_wav_is_refused_with_the_reason() {
    let mut bytes = std::io::Cursor::new(Vec::new());
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::new(&mut bytes, spec).unwrap();
    for (l, r) in [(16384i16, 0i16), (-16384, -16384)] {
        w.write_sample(l).unwrap();
        w.write_sample(r).unwrap();
    }
    w.finalize().unwrap();
    let (rate, mono) = read_wav(bytes.get_ref()).unwrap();
    assert_eq!(rate, 8000);
    assert_eq!(mono, vec![0.25, -0.5]);
    let err = read_wav(b"ID3\x04not a wav at all").unwrap_err();
    assert!(err.to_string().contains("not a WAV file"), "{err}");
}
