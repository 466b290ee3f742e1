//! A Piper voice on disk: `<name>.onnx` plus `<name>.onnx.json` (the standard
//! layout), its config, and the phoneme-to-id mapping with Piper's pad / bos /
//! eos conventions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::PiperError;

const PAD: char = '_';
const BOS: char = '^';
const EOS: char = '$';

#[derive(Debug, Clone, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    pub num_speakers: u32,
    #[serde(default)]
    pub speaker_id_map: BTreeMap<String, i64>,
    #[serde(default)]
    pub language: Option<LanguageConfig>,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub piper_version: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
    #[serde(default)]
    pub quality: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InferenceConfig {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { noise_scale: 0.667, length_scale: 1.0, noise_w: 0.8 }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LanguageConfig {
    pub code: String,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub name_english: Option<String>,
}

/// The files of a voice.
#[derive(Debug, Clone)]
pub struct VoiceFiles {
    pub model: PathBuf,
    pub config: PathBuf,
}

impl VoiceFiles {
    /// Finds the one `*.onnx` with its `*.onnx.json` in `dir`.
    pub fn find(dir: &Path) -> Result<Self, PiperError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PiperError::Voice(format!("{}: {e}", dir.display())))?;
        let mut models: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        models.sort();
        let model = match models.as_slice() {
            [one] => one.clone(),
            [] => return Err(PiperError::Voice(format!("no *.onnx voice in {}", dir.display()))),
            many => {
                return Err(PiperError::Voice(format!(
                    "{} holds {} voices ({}); point voice_dir at one",
                    dir.display(),
                    many.len(),
                    many.iter()
                        .filter_map(|p| p.file_name())
                        .map(|n| n.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let config = PathBuf::from(format!("{}.json", model.display()));
        if !config.exists() {
            return Err(PiperError::Voice(format!("{} has no config {}", model.display(), config.display())));
        }
        Ok(Self { model, config })
    }
}

impl VoiceConfig {
    pub fn load(path: &Path) -> Result<Self, PiperError> {
        let text = std::fs::read_to_string(path).map_err(|e| PiperError::Voice(format!("{}: {e}", path.display())))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| PiperError::Voice(format!("{}: {e}", path.display())))?;
        for required in [PAD, BOS, EOS] {
            if !config.phoneme_id_map.contains_key(&required.to_string()) {
                return Err(PiperError::Voice(format!("{}: phoneme_id_map lacks {required:?}", path.display())));
            }
        }
        if config.audio.sample_rate == 0 {
            return Err(PiperError::Voice(format!("{}: audio.sample_rate is 0", path.display())));
        }
        Ok(config)
    }

    /// Language tags: the family (`en`) and the BCP-47 form of the code (`en-US`).
    pub fn languages(&self) -> Vec<String> {
        let Some(lang) = &self.language else { return vec![self.espeak.voice.clone()] };
        let tag = lang.code.replace('_', "-");
        let family = lang.family.clone().unwrap_or_else(|| tag.split('-').next().unwrap_or(&tag).to_string());
        if family == tag { vec![tag] } else { vec![family, tag] }
    }

    /// Piper's id sequence: BOS, PAD, then each phoneme's ids followed by PAD, then EOS.
    /// Phonemes the voice does not know are skipped and counted.
    pub fn phoneme_ids(&self, phonemes: &str) -> (Vec<i64>, usize) {
        let id = |c: char| self.phoneme_id_map.get(c.encode_utf8(&mut [0; 4]) as &str);
        let pad = id(PAD).expect("checked at load");
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        ids.extend(id(BOS).expect("checked at load"));
        ids.extend(pad);
        let mut missing = 0;
        for c in phonemes.chars() {
            match id(c) {
                Some(v) => {
                    ids.extend(v);
                    ids.extend(pad);
                }
                None => missing += 1,
            }
        }
        ids.extend(id(EOS).expect("checked at load"));
        (ids, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VoiceConfig {
        serde_json::from_str(
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
                "phoneme_id_map":{"_":[0],"^":[1],"$":[2]," ":[3],"a":[4],"b":[5,6]},
                "language":{"code":"en_US","family":"en"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn ids_follow_pipers_conventions() {
        let (ids, missing) = tiny().phoneme_ids("a bz");
        assert_eq!(ids, vec![1, 0, 4, 0, 3, 0, 5, 6, 0, 2]);
        assert_eq!(missing, 1);
    }

    #[test]
    fn languages_and_defaults() {
        let v = tiny();
        assert_eq!(v.languages(), vec!["en", "en-US"]);
        assert_eq!(v.num_speakers, 1);
        assert_eq!(v.inference.noise_w, 0.8);
    }

    #[test]
    fn broken_voices_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("duplex-voice-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(VoiceFiles::find(&dir).unwrap_err().to_string().contains("no *.onnx"));
        std::fs::write(dir.join("x.onnx"), b"not a model").unwrap();
        assert!(VoiceFiles::find(&dir).unwrap_err().to_string().contains("no config"));
        std::fs::write(dir.join("x.onnx.json"), b"{\"audio\":{}}").unwrap();
        let files = VoiceFiles::find(&dir).unwrap();
        assert!(VoiceConfig::load(&files.config).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
