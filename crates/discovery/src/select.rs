//! Choosing a worker for a session from the registry's view: pure, so the
//! rules are tested without Redis.

use std::collections::HashMap;

use crate::record::WorkerRecord;

/// What a session needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Want<'a> {
    /// Model id; `None` = any worker (its default model).
    pub model: Option<&'a str>,
    /// BCP-47 language; `None` = any.
    pub language: Option<&'a str>,
    /// The worker this session used before (its affinity record): chosen
    /// again if it can still serve, whatever the load.
    pub affinity: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoWorker {
    #[error("no TTS worker is registered")]
    NoneRegistered,
    #[error("no live worker offers model {0:?}")]
    NoModel(String),
    #[error("no live worker speaks {0:?}")]
    NoLanguage(String),
    #[error("every worker that could serve this is down or full")]
    AllBusy,
}

fn offers(w: &WorkerRecord, want: &Want) -> (bool, bool) {
    match want.model {
        None => (true, true),
        Some(m) => match w.models.iter().find(|e| e.model_id == m) {
            Some(e) => (true, e.resident),
            // A predecessor record has no `models`: trust its resident list.
            None => {
                let resident = w.resident_models.iter().any(|r| r == m);
                (resident, resident)
            }
        },
    }
}

/// Whether `w` has `model` loaded now (`None`: its default, always loaded).
pub fn is_resident(w: &WorkerRecord, model: Option<&str>) -> bool {
    offers(w, &Want { model, ..Want::default() }).1
}

/// The model's own languages when the record lists them, else the worker's.
fn speaks(w: &WorkerRecord, want: &Want) -> bool {
    let Some(l) = want.language else { return true };
    let model_languages = want
        .model
        .and_then(|m| w.models.iter().find(|e| e.model_id == m))
        .map(|e| &e.languages)
        .filter(|langs| !langs.is_empty());
    let languages = model_languages.unwrap_or(&w.capabilities.languages);
    languages.iter().any(|have| l.starts_with(have.as_str()))
}

/// Picks the worker for `want`: it must offer the model and speak the
/// language; among those, the session's affinity worker wins, then one with
/// the model resident, then the least loaded by `max(reported, ours) / capacity`. `ours` counts this process's
/// sessions per worker name (fresher than a heartbeat); `down` lists workers
/// to skip.
pub fn select<'a>(
    workers: &'a [WorkerRecord],
    want: &Want,
    ours: &HashMap<String, u32>,
    down: &dyn Fn(&WorkerRecord) -> bool,
) -> Result<&'a WorkerRecord, NoWorker> {
    if workers.is_empty() {
        return Err(NoWorker::NoneRegistered);
    }
    let with_model: Vec<&WorkerRecord> = workers.iter().filter(|w| offers(w, want).0).collect();
    if with_model.is_empty() {
        return Err(NoWorker::NoModel(want.model.unwrap_or_default().to_string()));
    }
    let speaking: Vec<&WorkerRecord> = with_model.into_iter().filter(|w| speaks(w, want)).collect();
    if speaking.is_empty() {
        return Err(NoWorker::NoLanguage(want.language.unwrap_or_default().to_string()));
    }
    let load = |w: &WorkerRecord| {
        let active = w.load.active_sessions.max(ours.get(&w.name).copied().unwrap_or(0));
        let capacity = w.load.capacity.max(w.capabilities.max_concurrent_sessions).max(1);
        (active as f64 / capacity as f64, active >= capacity)
    };
    let sticky = |w: &WorkerRecord| want.affinity == Some(w.name.as_str());
    speaking
        .into_iter()
        .filter(|w| !down(w) && !load(w).1)
        .min_by(|a, b| {
            let (ra, rb) = (offers(a, want).1, offers(b, want).1);
            sticky(b).cmp(&sticky(a)).then(rb.cmp(&ra)).then(load(a).0.total_cmp(&load(b).0)).then(a.name.cmp(&b.name))
        })
        .ok_or(NoWorker::AllBusy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Capabilities, Load, ModelEntry};

    fn worker(name: &str, models: &[(&str, bool)], langs: &[&str], active: u32) -> WorkerRecord {
        WorkerRecord {
            name: name.into(),
            addr: format!("grpc://{name}:7001"),
            capabilities: Capabilities {
                languages: langs.iter().map(|l| l.to_string()).collect(),
                max_concurrent_sessions: 10,
                ..Default::default()
            },
            resident_models: models.iter().filter(|m| m.1).map(|m| m.0.to_string()).collect(),
            metrics: Default::default(),
            last_heartbeat_ts: 0.0,
            models: models
                .iter()
                .map(|(id, resident)| ModelEntry {
                    model_id: id.to_string(),
                    resident: *resident,
                    ..Default::default()
                })
                .collect(),
            device: "cpu".into(),
            load: Load { active_sessions: active, capacity: 10, ..Default::default() },
            version: String::new(),
        }
    }

    fn pick<'a>(ws: &'a [WorkerRecord], model: Option<&str>, lang: Option<&str>) -> Result<&'a str, NoWorker> {
        select(ws, &Want { model, language: lang, affinity: None }, &HashMap::new(), &|_| false)
            .map(|w| w.name.as_str())
    }

    #[test]
    fn model_and_language_first_then_residency_then_load() {
        let ws = vec![
            worker("a", &[("joe", true)], &["en"], 0),
            worker("b", &[("joe", false), ("siwis", true)], &["en", "fr"], 0),
            worker("c", &[("joe", true)], &["en"], 5),
        ];
        assert_eq!(pick(&ws, Some("siwis"), None), Ok("b"));
        assert_eq!(pick(&ws, Some("joe"), Some("fr-FR")), Ok("b"), "only b speaks French");
        assert_eq!(pick(&ws, Some("joe"), Some("en-US")), Ok("a"), "resident and least loaded");
        assert_eq!(pick(&ws, Some("nope"), None), Err(NoWorker::NoModel("nope".into())));
        assert_eq!(pick(&ws, Some("joe"), Some("de")), Err(NoWorker::NoLanguage("de".into())));
        assert_eq!(pick(&[], None, None), Err(NoWorker::NoneRegistered));
    }

    #[test]
    fn our_own_sessions_spread_load_and_down_or_full_workers_are_skipped() {
        let ws = vec![worker("a", &[("m", true)], &["en"], 0), worker("b", &[("m", true)], &["en"], 0)];
        let ours: HashMap<String, u32> = [("a".to_string(), 2)].into();
        let w = select(&ws, &Want { model: Some("m"), ..Want::default() }, &ours, &|_| false).unwrap();
        assert_eq!(w.name, "b", "a already has two of our sessions");
        let w = select(&ws, &Want::default(), &HashMap::new(), &|w| w.name == "a").unwrap();
        assert_eq!(w.name, "b");
        let full = vec![worker("a", &[("m", true)], &["en"], 10)];
        assert_eq!(select(&full, &Want::default(), &HashMap::new(), &|_| false), Err(NoWorker::AllBusy));
    }

    #[test]
    fn affinity_wins_while_its_worker_can_serve() {
        let ws = vec![
            worker("a", &[("m", true)], &["en"], 0),
            worker("b", &[("m", false)], &["en"], 9),
            worker("c", &[("m", true)], &["en"], 10),
        ];
        let want = |affinity| Want { model: Some("m"), language: None, affinity };
        let none = HashMap::new();
        assert_eq!(select(&ws, &want(Some("b")), &none, &|_| false).unwrap().name, "b", "over load and residency");
        assert_eq!(select(&ws, &want(Some("b")), &none, &|w| w.name == "b").unwrap().name, "a", "not when down");
        assert_eq!(select(&ws, &want(Some("c")), &none, &|_| false).unwrap().name, "a", "not when full");
        assert_eq!(select(&ws, &want(Some("gone")), &none, &|_| false).unwrap().name, "a");
    }

    #[test]
    fn a_models_own_languages_come_before_the_workers() {
        let mut w = worker("a", &[("fr_voice", true), ("en_voice", true)], &["en", "fr"], 0);
        w.models[0].languages = vec!["fr".into()];
        let ws = vec![w];
        assert_eq!(pick(&ws, Some("fr_voice"), Some("fr-FR")), Ok("a"));
        assert_eq!(pick(&ws, Some("fr_voice"), Some("en")), Err(NoWorker::NoLanguage("en".into())));
        assert_eq!(pick(&ws, Some("en_voice"), Some("en")), Ok("a"), "no model languages: the worker's");
        assert!(is_resident(&ws[0], Some("en_voice")) && is_resident(&ws[0], None));
    }
}
