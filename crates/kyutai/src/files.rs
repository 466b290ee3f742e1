//! Where the model's files come from: a local directory in Kyutai's release
//! layout, or a Hugging Face repo fetched into the usual Hugging Face cache
//! (`hf://owner/name`; `HF_HOME` and `HF_ENDPOINT` apply, as for Kyutai's
//! and Hugging Face's own tools, so a checkpoint they fetched is reused).
//!
//! The release's `config.json` names its other files: `moshi_name` (the
//! language model's checkpoint; `model.safetensors` when absent, as the
//! random-weight writer leaves it), `mimi_name` (the codec) and
//! `tokenizer_name` (SentencePiece). Voices are files of a directory or of a
//! hub repo (`kyutai/tts-voices`), named by their path without the suffix
//! that ties them to the model (`.1e68beda@240.safetensors`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::KyutaiError;

/// Prefix of a Hugging Face repo where a directory would do.
pub const HUB_PREFIX: &str = "hf://";

/// A directory, or a Hugging Face repo.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Dir(PathBuf),
    Hub(String),
}

impl Source {
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix(HUB_PREFIX) {
            Some(repo) => Self::Hub(repo.trim_matches('/').to_string()),
            None => Self::Dir(PathBuf::from(text)),
        }
    }
}

/// The files of one release, all on disk.
#[derive(Debug, Clone)]
pub struct Release {
    pub config: PathBuf,
    pub weights: PathBuf,
    /// `None` when `config.json` does not name one (the random-weight fixtures).
    pub codec: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

/// The file names `config.json` carries besides the shape.
#[derive(Debug, Default, Deserialize)]
struct Names {
    moshi_name: Option<String>,
    mimi_name: Option<String>,
    tokenizer_name: Option<String>,
}

impl Names {
    fn read(config: &Path) -> Result<Self, KyutaiError> {
        let bytes = std::fs::read(config).map_err(|source| KyutaiError::Io { path: config.into(), source })?;
        serde_json::from_slice(&bytes).map_err(|e| KyutaiError::Config(format!("{}: {e}", config.display())))
    }

    fn weights(&self) -> &str {
        self.moshi_name.as_deref().unwrap_or("model.safetensors")
    }
}

impl Release {
    /// The release in `dir`; every file `config.json` names must be there.
    pub fn local(dir: &Path) -> Result<Self, KyutaiError> {
        let config = present(dir.join("config.json"), "the model's config.json")?;
        let names = Names::read(&config)?;
        let file = |name: &str, what: &str| present(dir.join(name), what);
        Ok(Self {
            weights: file(names.weights(), "the checkpoint (config.json's moshi_name)")?,
            codec: names
                .mimi_name
                .as_deref()
                .map(|n| file(n, "the Mimi codec (config.json's mimi_name)"))
                .transpose()?,
            tokenizer: names
                .tokenizer_name
                .as_deref()
                .map(|n| file(n, "the tokenizer (config.json's tokenizer_name)"))
                .transpose()?,
            config,
        })
    }

    /// The release of `repo` on the hub, fetched (with progress bars) unless cached.
    pub fn fetch(hub: &Hub, repo: &str) -> Result<Self, KyutaiError> {
        let config = hub.fetch(repo, "config.json")?;
        let names = Names::read(&config)?;
        Ok(Self {
            weights: hub.fetch(repo, names.weights())?,
            codec: names.mimi_name.as_deref().map(|n| hub.fetch(repo, n)).transpose()?,
            tokenizer: names.tokenizer_name.as_deref().map(|n| hub.fetch(repo, n)).transpose()?,
            config,
        })
    }

    /// The release at `source`.
    pub fn resolve(source: &Source, hub: &Hub) -> Result<Self, KyutaiError> {
        match source {
            Source::Dir(dir) => Self::local(dir),
            Source::Hub(repo) => Self::fetch(hub, repo),
        }
    }
}

fn present(path: PathBuf, what: &str) -> Result<PathBuf, KyutaiError> {
    if path.is_file() { Ok(path) } else { Err(KyutaiError::Missing { what: what.to_string(), path }) }
}

/// The environment the Hugging Face client reads (as Hugging Face's own tools do).
pub const HUB_ENV: [&str; 3] = ["HF_HOME", "HF_ENDPOINT", "HF_TOKEN"];

/// A Hugging Face client: the endpoint, cache and token from the
/// environment unless given (`HF_TOKEN`, else the cache's `token` file).
pub struct Hub {
    api: hf_hub::api::sync::Api,
}

impl Hub {
    pub fn new(endpoint: Option<&str>, cache_dir: Option<&Path>) -> Result<Self, KyutaiError> {
        let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true);
        if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
            builder = builder.with_token(Some(token));
        }
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        if let Some(dir) = cache_dir {
            builder = builder.with_cache_dir(dir.to_path_buf());
        }
        let api = builder.build().map_err(|e| KyutaiError::Config(format!("Hugging Face client: {e}")))?;
        Ok(Self { api })
    }

    /// `file` of model repo `repo`: from the cache, or downloaded into it.
    pub fn fetch(&self, repo: &str, file: &str) -> Result<PathBuf, KyutaiError> {
        self.api.model(repo.to_string()).get(file).map_err(|e| KyutaiError::Fetch {
            repo: repo.to_string(),
            file: file.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Voice files: name → path.
pub fn voices(
    source: &Source,
    hub: &Hub,
    wanted: &[String],
    suffix: &str,
) -> Result<Vec<(String, PathBuf)>, KyutaiError> {
    match source {
        Source::Hub(repo) => {
            wanted.iter().map(|name| Ok((name.clone(), hub.fetch(repo, &format!("{name}{suffix}"))?))).collect()
        }
        Source::Dir(dir) => {
            let mut found = Vec::new();
            walk(dir, dir, suffix, &mut found)?;
            for name in wanted {
                if !found.iter().any(|(n, _)| n == name) {
                    return Err(KyutaiError::Missing {
                        what: format!("voice {name:?} ({name}{suffix} or {name}.safetensors)"),
                        path: dir.clone(),
                    });
                }
            }
            found.sort();
            Ok(found)
        }
    }
}

/// Every voice file under `dir`, named by its path from `root`.
fn walk(root: &Path, dir: &Path, suffix: &str, found: &mut Vec<(String, PathBuf)>) -> Result<(), KyutaiError> {
    let entries = std::fs::read_dir(dir).map_err(|source| KyutaiError::Io { path: dir.into(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, suffix, found)?;
            continue;
        }
        let Some(relative) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) else { continue };
        let name = relative.strip_suffix(suffix).or_else(|| relative.strip_suffix(".safetensors"));
        if let Some(name) = name {
            found.push((name.to_string(), path.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn a_source_is_a_directory_or_a_hub_repo() {
        assert_eq!(Source::parse("hf://kyutai/tts-voices/"), Source::Hub("kyutai/tts-voices".into()));
        assert_eq!(Source::parse("/models/tts"), Source::Dir("/models/tts".into()));
    }

    #[test]
    fn the_release_layout_is_read_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let config = r#"{"dim": 1, "moshi_name": "dsm.safetensors", "mimi_name": "mimi.safetensors",
            "tokenizer_name": "spm.model"}"#;
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        touch(&dir.path().join("dsm.safetensors"));
        touch(&dir.path().join("mimi.safetensors"));
        let err = Release::local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("spm.model") && err.contains("tokenizer_name"), "{err}");
        touch(&dir.path().join("spm.model"));
        let release = Release::local(dir.path()).unwrap();
        assert_eq!(release.weights, dir.path().join("dsm.safetensors"));
        assert_eq!(release.tokenizer, Some(dir.path().join("spm.model")));
    }

    #[test]
    fn voices_are_named_by_their_path_without_the_model_suffix() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("expresso/happy.wav.1e68beda@240.safetensors"));
        touch(&dir.path().join("alice.safetensors"));
        touch(&dir.path().join("notes.txt"));
        let hub = Hub::new(Some("http://127.0.0.1:9"), Some(dir.path())).unwrap();
        let source = Source::Dir(dir.path().into());
        let suffix = ".1e68beda@240.safetensors";
        let found = voices(&source, &hub, &["alice".into()], suffix).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["alice", "expresso/happy.wav"]);
        let err = voices(&source, &hub, &["bob".into()], suffix).unwrap_err().to_string();
        assert!(err.contains("bob"), "{err}");
    }
}
