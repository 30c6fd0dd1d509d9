//! A directory of model files, looked up by name at scoring time, and reloaded when the
//! files change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::{Model, ModelError};

/// Models by name, shared between the SQL functions and whoever (re)loads them.
///
/// Swapping a model is atomic: a scoring call sees either the old or the new one.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: RwLock<HashMap<String, Arc<Model>>>,
    /// Modification time and length of each file as last read, to notice changes.
    stamps: Mutex<HashMap<PathBuf, (SystemTime, u64)>>,
}

/// What a [`ModelRegistry::reload_dir`] pass did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Models whose file changed and which were swapped in.
    pub reloaded: Vec<String>,
    /// Changed files that were not taken, with the reason; the old model stays in use.
    pub refused: Vec<(PathBuf, String)>,
}

fn model_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let io = |source| ModelError::Io {
        path: dir.into(),
        source,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads a model file; its name is the file stem.
fn load_named(p: &Path) -> Result<Model, ModelError> {
    let mut m = Model::load(p)?;
    if let Some(stem) = p.file_stem() {
        m.name = stem.to_string_lossy().to_string();
    }
    Ok(m)
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `*.json` model in `dir` (other files, such as model cards, are ignored).
    /// A model's name is its file stem.
    pub fn load_dir(&self, dir: &Path) -> Result<usize, ModelError> {
        let paths = model_files(dir)?;
        for p in &paths {
            let before = stamp(p);
            self.insert(load_named(p)?);
            if let Some(s) = before {
                self.stamps.lock().expect("stamps").insert(p.clone(), s);
            }
        }
        Ok(paths.len())
    }

    /// Reloads the model files in `dir` that are new or changed since they were last read.
    /// A changed file that fails to load, or that would change the number of arguments
    /// running queries pass, is refused and the model in use stays.
    pub fn reload_dir(&self, dir: &Path) -> Result<ReloadReport, ModelError> {
        let mut report = ReloadReport::default();
        for p in model_files(dir)? {
            let Some(now) = stamp(&p) else { continue };
            if self.stamps.lock().expect("stamps").get(&p) == Some(&now) {
                continue;
            }
            // Remember the stamp either way, so a bad file is reported once, not every pass.
            self.stamps.lock().expect("stamps").insert(p.clone(), now);
            match load_named(&p) {
                Ok(m) => match self.get(&m.name) {
                    Some(old) if old.arity() != m.arity() || old.key != m.key => {
                        report.refused.push((
                            p.clone(),
                            format!(
                                "model '{}' would change from {} to {} arguments; queries are planned against the old shape, restart to change it",
                                m.name,
                                old.arity(),
                                m.arity()
                            ),
                        ));
                    }
                    Some(old) if *old == m => {}
                    _ => {
                        report.reloaded.push(m.name.clone());
                        self.insert(m);
                    }
                },
                Err(e) => report.refused.push((p.clone(), e.to_string())),
            }
        }
        Ok(report)
    }

    /// Adds or replaces a model.
    pub fn insert(&self, m: Model) {
        self.models
            .write()
            .expect("registry lock")
            .insert(m.name.clone(), Arc::new(m));
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    /// Names of all loaded models, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .models
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }
}
